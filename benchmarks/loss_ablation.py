"""The k1.5 loss vs ReST vs GRPO, and optimizer reset vs none, on the long-CoT workload
(report §2.3.2 and its ablation: ReST, which fits only the best samples, learns less), at
equal samples: every arm trains the same iterations x prompts x K = 8 samples from the
warmed-up `builtin-long` model (BASE in long_cot.py).

    k15                the k1.5 mirror-descent loss, optimizer reset every iteration (the report)
    grpo               GRPO's clipped ratio with group-normalised advantages (no KL term)
    rest               ReST: supervised fit of the samples whose reward is above 0.5
    k15_keep_opt       k15 with one AdamW for the whole run (algorithm.optimizer_reset=false)
    k15_lr2            k15 at --lr2
    k15_keep_opt_lr2   k15_keep_opt at --lr2

Per arm and seed: held-out accuracy (sampled, T = 1) over iterations; per arm the mean
final accuracy with a 95% t-interval over seeds, its gain over the start, and its
difference from `k15` paired by seed (same seed, same test prompts and start model). Writes
OUT/loss_ablation.png and benchmarks/results/loss_ablation.json.

    python benchmarks/loss_ablation.py                                   # all six arms (about 55 min on 2 cores)
    python benchmarks/loss_ablation.py --arms k15,grpo,rest              # the loss comparison alone
    python benchmarks/loss_ablation.py --seeds 0 --iterations 2 --prompts 2 --test-per-level 2   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from long_cot import plot_arms, run_arm
from results import write_result
from stats import paired_points, t_interval


def arms(lr: float, lr2: float) -> dict[str, list[str]]:
    keep = ["algorithm.optimizer_reset=false"]
    return {
        "k15": ["algorithm.loss=k15", f"algorithm.lr={lr}"],
        "grpo": ["algorithm.loss=grpo", f"algorithm.lr={lr}"],
        "rest": ["algorithm.loss=rest", f"algorithm.lr={lr}"],
        "k15_keep_opt": ["algorithm.loss=k15", f"algorithm.lr={lr}", *keep],
        "k15_lr2": ["algorithm.loss=k15", f"algorithm.lr={lr2}"],
        "k15_keep_opt_lr2": ["algorithm.loss=k15", f"algorithm.lr={lr2}", *keep],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="k15,grpo,rest,k15_keep_opt,k15_lr2,k15_keep_opt_lr2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--prompts", type=int, default=4, help="prompts per iteration (8 samples each)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr2", type=float, default=3e-5)
    p.add_argument("--minibatches", type=int, default=1,
                   help="optimizer steps per iteration (at lr 1e-4, 4 steps lost 12.2 held-out points over 3 "
                        "seeds on this workload, 1 step 1.7: docs/long_cot.md)")
    p.add_argument("--levels", default="1,2,3")
    p.add_argument("--test-per-level", type=int, default=15)
    # Every level 1-3 warm-up trace fits in 1,024 tokens (the longest of 900 drawn is 1,023), so the
    # budget only cuts runaways, and it keeps all six arms x 3 seeds within an hour on 2 cores.
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--out", default="runs/loss_ablation")
    p.add_argument("--rerun", action="store_true")
    args = p.parse_args(argv)
    table = arms(args.lr, args.lr2)
    names = args.arms.split(",")
    unknown = [a for a in names if a not in table]
    if unknown:
        p.error(f"--arms: unknown arm {unknown[0]!r} (choose from {', '.join(table)})")
    steps = min(args.minibatches, args.prompts)
    common = [f"iterations={args.iterations}", f"rollout.prompts_per_iteration={args.prompts}",
              f"algorithm.minibatches={steps}", f"data.train_levels=[{args.levels}]",
              f"data.test_levels=[{args.levels}]", f"data.test_per_level={args.test_per_level}",
              "data.train_per_level=150", f"rollout.max_new_tokens={args.max_new_tokens}",
              f"eval.every={max(args.iterations // 3, 1)}"]
    t0 = time.time()
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_arm(arm, seed, common + table[arm], out, args.rerun) for seed in seeds for arm in names]
    methods = {}
    for arm in names:
        rs = [r for r in runs if r["arm"] == arm]
        final = [r["acc_after"] for r in rs]
        gain = [100 * (r["acc_after"] - r["acc_before"]) for r in rs]
        vs, vs_ci = paired_points(runs, arm, "k15")
        curve = [(i, statistics.mean(dict(r["acc_curve"])[i] for r in rs)) for i, _ in rs[0]["acc_curve"]]
        methods[arm] = {"overrides": table[arm], "final_accuracy": statistics.mean(final),
                        "final_accuracy_ci95": t_interval(final), "gain_points": statistics.mean(gain),
                        "gain_ci95": t_interval(gain), "curve": curve,
                        "final_tokens": statistics.mean(r["tokens_after"] for r in rs),
                        "vs_k15_points": vs, "vs_k15_ci95": vs_ci,
                        "per_seed": [{"seed": r["seed"], "before": r["acc_before"], "after": r["acc_after"]}
                                     for r in rs]}
        lo, hi = methods[arm]["final_accuracy_ci95"]
        print(f"{arm:18s} final accuracy {100 * methods[arm]['final_accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
              f"gain {methods[arm]['gain_points']:+.1f} points")
    plot_arms(runs, out / "loss_ablation.png", f"loss and optimizer-reset ablation, {len(seeds)} seeds")
    write_result("loss_ablation", {
        "seeds": seeds, "methods": methods, "iterations": args.iterations, "prompts_per_iteration": args.prompts,
        "lr": args.lr, "lr2": args.lr2, "minibatches": steps,
        "samples_per_prompt": 8, "levels": args.levels, "test_prompts": runs[0]["n_test"],
        "max_new_tokens": args.max_new_tokens, "runs": runs,
        "runs_wall_s": sum(r["wall_s"] for r in runs)}, wall_s=time.time() - t0)
    print(f"{(time.time() - t0) / 60:.1f} min; plot {out / 'loss_ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
