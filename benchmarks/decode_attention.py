"""The built-in engine's decoding attention (`k15rl/rollout/slots.py: decode_attention`) vs
transformers' SDPA attention, side by side on the same rollouts.

`builtin-long` on `subset_sum` (levels 2-3), K = 8 samples of 8 prompts, responses up to
1,024 tokens, T = 1 with a fixed seed, one engine of 64 slots, 2 threads. The two arms
alternate (written-out, SDPA, written-out, SDPA, ...) so that drifts of the machine's speed
touch both; each reports tokens generated per second of `generate`. The SDPA arm swaps
`decode_attention` for transformers' `sdpa_attention_forward` (what the engine ran before);
everything else is the same code.

    python benchmarks/decode_attention.py            # about 5 minutes
    python benchmarks/decode_attention.py --rounds 1 # a smoke run

Writes benchmarks/results/decode_attention.json; docs/rollout.md renders it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import write_result  # noqa: E402

from k15rl.models.loading import encode_prompt, load_model, load_tokenizer  # noqa: E402
from k15rl.rollout import slots  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.tasks import get_task, make_prompts  # noqa: E402
from k15rl.trainer.resolve import resolve_model_path  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402


def run_arm(engine: HFEngine, requests: list[GenerationRequest], params: SamplingParams, sdpa: bool) -> dict:
    """One `generate` over all requests; with `sdpa`, transformers' attention in every step."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    written_out = slots.decode_attention
    if sdpa:
        slots.decode_attention = sdpa_attention_forward
    try:
        t0 = time.perf_counter()
        segments = engine.generate(requests, params)
        seconds = time.perf_counter() - t0
    finally:
        slots.decode_attention = written_out
    tokens = sum(len(s.token_ids) for s in segments)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin-long")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs (written-out, then SDPA)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = resolve_model_path(args.model, "--model")
    model, tok = load_model(path), load_tokenizer(path)
    prompts = make_prompts(get_task("subset_sum"), "train", args.prompts // 2, (2, 3), seed=1)
    requests = [GenerationRequest(encode_prompt(tok, p.messages)) for p in prompts for _ in range(8)]
    params = SamplingParams(args.max_new_tokens, seed=0, stop_token_ids=[tok.eos_token_id])
    engine = HFEngine(model, tok, max_batch=len(requests))
    runs = []
    for r in range(args.rounds):
        for sdpa in (False, True):
            row = {"round": r, "attention": "sdpa" if sdpa else "written_out",
                   **run_arm(engine, requests, params, sdpa)}
            print(f"round {r}: {row['attention']:12s} {row['tokens']:,} tokens in {row['seconds']:.1f} s, "
                  f"{row['tokens_per_s']:.0f} tokens/s", flush=True)
            runs.append(row)
    rate = {a: statistics.median(x["tokens_per_s"] for x in runs if x["attention"] == a) for a in ("written_out", "sdpa")}
    ratios = [w["tokens_per_s"] / s["tokens_per_s"] for w, s in zip(runs[::2], runs[1::2])]
    print(f"written-out / SDPA: {rate['written_out'] / rate['sdpa']:.2f}x (per round: "
          + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    write_result("decode_attention", {
        "model": args.model, "task": "subset_sum", "levels": [2, 3], "k": 8, "prompts": args.prompts,
        "slots": len(requests), "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
        "tokens_per_s": rate, "speedup": rate["written_out"] / rate["sdpa"], "speedup_per_round": ratios,
        "runs": runs})


if __name__ == "__main__":
    main()
