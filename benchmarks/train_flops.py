"""Training speed against the machine's bf16 GEMM peak, in one run.

1. The peak: the best of several `torch.matmul` runs of an N x N x N product in bfloat16
   (and float32, for reference) on the threads the update uses.
2. The update: `PolicyTrainer.update` (the config path: `load_config` -> `update_plan`,
   bf16 autocast on, one mini-batch, AdamW created afresh as every iteration does) on
   trajectories of random tokens, timed after one warm-up update. Its useful arithmetic
   is counted the usual way (model FLOPs): 6 x (matrix parameters, LM head included) per
   token for forward + backward, plus attention's 6 x 2 x layers x d_model x context per
   token (QK^T and AV, forward + backward, causal: context = half the row on average).
3. What limits it: torch.profiler over one update, self CPU time per operator, grouped
   into matrix products, attention, elementwise/normalisation, log-softmax/log-probs,
   optimizer, and the rest; and the matrix products' own speed (the profiler's FLOP count
   of mm/addmm/bmm over their self time). `fraction_bound_matmuls_only` is the fraction
   the update would reach if every other operator took no time at all (model FLOPs over
   the matrix products' time): no change outside the matrix products gets past it.

Writes benchmarks/results/train_flops.json with `fraction_of_gemm_peak`.

    python benchmarks/train_flops.py --model models/smollm2 --rows 8 --response-tokens 224
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict

from results import write_result

GROUPS = (  # first match wins, on the profiler's operator name
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("log-softmax and log-probs", ("log_softmax", "gather", "logsumexp")),
    ("optimizer (AdamW)", ("_foreach", "adamw", "lerp", "addcdiv", "addcmul")),
    ("dtype casts (autocast)", ("aten::to", "aten::_to_copy", "aten::copy_")),
    ("elementwise and normalisation", ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt", "aten::pow",
                                       "aten::mean", "aten::neg", "aten::cat", "aten::sub", "aten::div",
                                       "aten::exp", "aten::sum", "aten::where", "aten::fill_", "aten::zero_",
                                       "aten::index", "aten::embedding", "aten::clone", "aten::cos", "aten::sin")),
)


def gemm_peak(n: int, dtype, threads: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` n^3 matrix products."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def model_flops(model, rows: int, row_tokens: int) -> float:
    """Forward + backward FLOPs of one pass over the batch (model FLOPs, see the docstring)."""
    cfg = model.config
    matrix = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    if getattr(cfg, "tie_word_embeddings", False):  # the tied LM head is a matrix product too
        matrix += model.get_input_embeddings().weight.numel()
    tokens = rows * row_tokens
    attn = 6 * 2 * cfg.num_hidden_layers * cfg.hidden_size * (row_tokens / 2)
    return tokens * (6 * matrix + attn)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--response-tokens", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm", type=int, default=2048, help="N of the N x N x N peak product")
    ap.add_argument("--updates", type=int, default=3, help="timed updates after the warm-up one")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from k15rl.config import load_config
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.trainer.update import PolicyTrainer, update_plan
    from k15rl.types import Prompt, Trajectory

    t_start = time.time()
    peak_bf16 = gemm_peak(args.gemm, torch.bfloat16, args.threads)
    peak_fp32 = gemm_peak(args.gemm, torch.float32, args.threads)
    print(f"GEMM {args.gemm}^3 on {args.threads} threads: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f}")

    torch.manual_seed(0)
    tok, model = load_tokenizer(args.model), load_model(args.model)
    cfg = load_config(None, [f"algorithm.micro_batch={args.rows}", f"rollout.prompts_per_iteration={args.rows // 2}",
                             "rollout.k=2", "algorithm.minibatches=1", "algorithm.autocast_bf16=true",
                             f"threads={args.threads}"])
    rng = random.Random(0)
    trajs = []
    for i in range(args.rows):  # groups of 2, one rewarded sample each
        prompt = [rng.randrange(3, model.config.vocab_size) for _ in range(args.prompt_tokens)]
        resp = [rng.randrange(3, model.config.vocab_size) for _ in range(args.response_tokens)]
        trajs.append(Trajectory(Prompt(f"p{i // 2}", (("user", "?"),), "", "bench"), i // 2, prompt, resp,
                                [-11.0] * len(resp), "max_len", reward=float(i % 2 == 0)))
    trainer = PolicyTrainer(model, update_plan(cfg, tok.pad_token_id))
    trainer.update(trajs, version=0, seed=0)  # warm-up
    times = []
    for k in range(args.updates):
        t0 = time.perf_counter()
        trainer.update(trajs, version=k + 1, seed=k + 1)
        times.append(time.perf_counter() - t0)
    update_s = min(times)
    row_tokens = args.prompt_tokens + args.response_tokens
    flops = model_flops(model, args.rows, row_tokens)
    achieved = flops / update_s / 1e9
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        trainer.update(trajs, version=99, seed=99)
    by_group: dict[str, float] = defaultdict(float)
    top = []
    mm_flops = 0.0  # the profiler's count for the matrix products it knows (mm, addmm, bmm)
    for ev in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total):
        name = ev.key
        group = next((g for g, pats in GROUPS if any(p in name for p in pats)), "other")
        by_group[group] += ev.self_cpu_time_total / 1e6
        if group == "matrix products":
            mm_flops += ev.flops or 0
        if len(top) < 12:
            top.append({"op": name, "self_s": ev.self_cpu_time_total / 1e6, "calls": ev.count})
    total = sum(by_group.values())
    shares = {g: {"self_s": s, "share": s / total} for g, s in sorted(by_group.items(), key=lambda x: -x[1])}
    frac = achieved / peak_bf16
    mm_s = shares["matrix products"]["self_s"]
    mm_gflops = mm_flops / mm_s / 1e9  # the matrix products' own speed
    bound = flops / mm_s / 1e9 / peak_bf16  # every other operator free
    print(f"update: {update_s:.2f} s for {args.rows} x {row_tokens} tokens, {flops / 1e12:.2f} TFLOP: "
          f"{achieved:.0f} GFLOP/s = {frac:.2f} of the bf16 GEMM peak")
    for g, v in shares.items():
        print(f"  {g:<32} {v['self_s']:6.2f} s  {100 * v['share']:5.1f}%")
    print(f"matrix products alone: {mm_gflops:.0f} GFLOP/s = {mm_gflops / peak_bf16:.2f} of the peak; "
          f"with every other operator free the update would reach {bound:.2f}")
    write_result("train_flops", {
        "model": args.model, "parameters": sum(p.numel() for p in model.parameters()), "rows": args.rows,
        "row_tokens": row_tokens, "threads": args.threads, "gemm_n": args.gemm,
        "gemm_peak_gflops_bf16": peak_bf16, "gemm_peak_gflops_fp32": peak_fp32,
        "update_s": update_s, "update_s_all": times, "model_tflop_per_update": flops / 1e12,
        "update_gflops": achieved, "fraction_of_gemm_peak": frac, "profile_groups": shares, "profile_top_ops": top,
        "matrix_products_tflop_profiled": mm_flops / 1e12, "matrix_products_gflops": mm_gflops,
        "matrix_products_fraction_of_peak": mm_gflops / peak_bf16, "fraction_bound_matmuls_only": bound,
        "wall_s": time.time() - t_start,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
