"""Peak memory of one rollout (a `HFEngine.generate` call) by prefill chunk size
(`rollout.prefill_tokens`): every admitted prompt prefilled at once, against the default
chunks.

Each mode runs in its own child process (one mode's allocations never lower another's
peak): load the model, touch its weights once (a one-token forward: safetensors maps
them lazily), then one `generate` of `--rows` prompts of random tokens (memory does not
depend on what they say; lengths drawn between 80% and 100% of `--prompt-tokens`) for
`--new-tokens` tokens each. A child reports its peak resident set size (RSS) before and
after; the difference is the rollout's own peak (the slots' KV cache, the prefill's
cache and activations, logits). The sampled tokens of every mode are compared: chunks
change nothing but memory. Writes benchmarks/results/rollout_memory.json (docs/rollout.md
renders it).

    python benchmarks/rollout_memory.py --model models/smollm2 --rows 64 --prompt-tokens 300 --new-tokens 48
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import sys
import time

from results import model_name, run_child, write_result

MODES = {"one chunk": 10**9, "chunks (default)": None}  # name -> rollout.prefill_tokens (None: the default)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One mode: one generate call; prints one JSON line."""
    import torch

    from k15rl.config import RolloutConfig
    from k15rl.malloc import return_freed_memory
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.rollout.engine import HFEngine, SamplingParams
    from k15rl.types import GenerationRequest

    return_freed_memory()  # as in a training process (k15rl/malloc.py)
    torch.set_num_threads(args.threads)
    tok, model = load_tokenizer(args.model), load_model(args.model)
    with torch.no_grad():
        model(torch.tensor([[1]]))
    budget = MODES[args.child] or RolloutConfig.prefill_tokens
    rng = random.Random(0)
    vocab = model.config.vocab_size
    reqs = [GenerationRequest([rng.randrange(3, vocab) for _ in range(rng.randint(int(0.8 * args.prompt_tokens),
                                                                                  args.prompt_tokens))])
            for _ in range(args.rows)]
    engine = HFEngine(model, tok, max_batch=args.rows, prefill_tokens=budget)
    before = peak_rss_mb()
    t0 = time.time()
    segs = engine.generate(reqs, SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=0))
    out = {"mode": args.child, "prefill_tokens": budget, "rss_before_mb": round(before, 1),
           "peak_rss_mb": round(peak_rss_mb(), 1), "generate_s": round(time.time() - t0, 1),
           "tokens": sum(len(s.token_ids) for s in segs),
           "tokens_sha1": hashlib.sha1(json.dumps([s.token_ids for s in segs]).encode()).hexdigest()}
    out["rollout_peak_mb"] = round(out["peak_rss_mb"] - out["rss_before_mb"], 1)
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2", help="a Hugging Face model folder")
    ap.add_argument("--rows", type=int, default=64, help="prompts, all admitted at once (max_batch = rows)")
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    t0 = time.time()
    rows = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--rows", str(args.rows),
               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
               "--threads", str(args.threads)]
        rows.append(run_child(cmd, mode))
        r = rows[-1]
        print(f"{mode:18s} prefill_tokens {r['prefill_tokens']:>10}  peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"(rollout {r['rollout_peak_mb']:6.0f} MB)  {r['generate_s']:5.1f} s", flush=True)
    base = rows[0]["rollout_peak_mb"]
    for r in rows:
        r["rollout_peak_ratio"] = round(r["rollout_peak_mb"] / base, 3) if base else None
    model = model_name(args.model)
    write_result("rollout_memory", {
        "model": model, "model_folder": args.model, "rows": args.rows, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "threads": args.threads, "modes": rows,
        "same_tokens": len({r["tokens_sha1"] for r in rows}) == 1}, wall_s=time.time() - t0)


if __name__ == "__main__":
    main()
