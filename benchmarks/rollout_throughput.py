"""Rollout throughput: the continuous-batching engine vs `model.generate` in fixed batches.

Same model, prompts, sampling settings (T = 1, no top-k/top-p) and batch width on two
workloads with long-tailed response lengths (see workloads.py). Three ways to sample:

    hf-generate   transformers' generate, requests in fixed batches of --slots (what
                  trainers without an inference engine do): a batch runs until its
                  longest member ends
    native-fixed  this project's engine, called once per fixed batch: finished rows
                  leave the batch (no compute behind them), but no new row joins
    native        the engine, all requests at once: a finished row's slot is refilled
                  at once from the waiting requests (continuous batching)

Prints generated tokens/s and the ratio to hf-generate, measured side by side here, and
writes them to benchmarks/results/rollout_throughput.json (docs/rollout.md renders it).

    python benchmarks/rollout_throughput.py            # about 6 minutes on 2 cores
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
from workloads import ForcedLengthEngine, pareto_length, sort_prompts  # noqa: E402

from k15rl.trainer.warmup import ensure_builtin  # noqa: E402
from k15rl.models.loading import encode_prompt, load_model, load_tokenizer  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402


class TargetLengths:
    """Per-row stopping criterion for generate: row i is done after targets[i] new tokens."""

    def __init__(self, prompt_len: int, targets: list[int]):
        self.prompt_len, self.targets = prompt_len, torch.tensor(targets)

    def __call__(self, input_ids, scores, **kw):
        return (input_ids.shape[1] - self.prompt_len) >= self.targets


def hf_generate(model, tok, prompt_ids, slots, max_new, targets=None, seed=0):
    """Fixed batches of `slots` requests, left-padded; returns tokens generated (up to and
    including EOS, or the target length)."""
    from transformers import StoppingCriteriaList

    torch.manual_seed(seed)
    total = 0
    for s in range(0, len(prompt_ids), slots):
        chunk = prompt_ids[s:s + slots]
        P = max(len(p) for p in chunk)
        ids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + p for p in chunk])
        attn = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in chunk])
        kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                  pad_token_id=tok.pad_token_id)
        if targets is None:
            kw["eos_token_id"] = tok.eos_token_id
        else:
            t = targets[s:s + slots]
            kw.update(eos_token_id=None, suppress_tokens=[tok.eos_token_id], max_new_tokens=max(t),
                      stopping_criteria=StoppingCriteriaList([TargetLengths(P, t)]))
        out = model.generate(input_ids=ids, attention_mask=attn, **kw)[:, P:]
        for i, row in enumerate(out.tolist()):
            if targets is not None:
                total += targets[s + i]
            else:
                n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
                total += n
    return total


def native(engine, requests, params, slots, fixed):
    if not fixed:
        return sum(len(s.token_ids) for s in engine.generate(requests, params))
    return sum(len(s.token_ids) for i in range(0, len(requests), slots)
               for s in engine.generate(requests[i:i + slots], params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=200, help="natural workload's maximum")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each method (interleaved); the median is shown")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = ensure_builtin()
    model, tok = load_model(path), load_tokenizer(path)
    prompts = sort_prompts(args.requests)
    prompt_ids = [encode_prompt(tok, p.messages) for p in prompts]
    targets = [pareto_length(f"r{i}", seed=0) for i in range(len(prompts))]
    eos = [tok.eos_token_id]
    engine = HFEngine(model, tok, max_batch=args.slots)
    forced = ForcedLengthEngine(engine, lambda rid: targets[int(rid[1:])])
    reqs = [GenerationRequest(p, id=f"r{i}") for i, p in enumerate(prompt_ids)]
    workloads = {
        "natural (sort L1-6)": (
            lambda: hf_generate(model, tok, prompt_ids, args.slots, args.max_new_tokens),
            lambda fixed: native(engine, reqs, SamplingParams(args.max_new_tokens, stop_token_ids=eos), args.slots, fixed),
        ),
        "heavy-tailed (Pareto 1.2, 16-896)": (
            lambda: hf_generate(model, tok, prompt_ids, args.slots, 896, targets),
            lambda fixed: native(forced, reqs, SamplingParams(896), args.slots, fixed),
        ),
    }
    print(f"{args.requests} requests, {args.slots} slots, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; "
          f"heavy-tailed targets: mean {sum(targets) / len(targets):.0f}, max {max(targets)} tokens")
    print(f"{'workload':38s} {'method':13s} {'tokens':>8s} {'seconds':>8s} {'tok/s':>8s} {'vs hf':>6s}")
    measured = []
    for name, (hf, nat) in workloads.items():
        times: dict[str, list[float]] = {}
        tokens_of: dict[str, int] = {}
        for _ in range(args.repeats):  # methods interleaved, median time: robust to a noisy machine
            for method, fn in (("hf-generate", hf), ("native-fixed", lambda: nat(True)),
                               ("native", lambda: nat(False))):
                t0 = time.perf_counter()
                tokens_of[method] = fn()
                times.setdefault(method, []).append(time.perf_counter() - t0)
        runs = {m: (tokens_of[m], statistics.median(ts)) for m, ts in times.items()}
        base = runs["hf-generate"][0] / runs["hf-generate"][1]
        rows = []
        for method, (tokens, secs) in runs.items():
            print(f"{name:38s} {method:13s} {tokens:8d} {secs:8.1f} {tokens / secs:8.0f} {tokens / secs / base:5.2f}x")
            rows.append({"method": method, "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                         "vs_hf_generate": tokens / secs / base})
        measured.append({"workload": name, "methods": rows})
    write_result("rollout_throughput", {
        "requests": args.requests, "slots": args.slots, "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "heavy_tailed_targets": {"mean": sum(targets) / len(targets), "max": max(targets)},
        "workloads": measured,
    })


if __name__ == "__main__":
    main()
