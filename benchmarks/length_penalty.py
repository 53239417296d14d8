"""The length penalty (report §2.3.3) on the long-CoT workload, against none, at equal samples.

    none     the k1.5 loss on the task reward alone
    length   the same plus the length reward with its warm-up schedule: no length reward for
             the first `--warmup` iterations, then weight `--weight` (the report's "warm-up:
             standard policy optimization first, then a constant length penalty")

Both arms start from the warmed-up `builtin-long` model, whose traces overthink (the search
goes on after the answer, and re-checks it), so a shorter correct answer exists. Per seed,
on the held-out prompts at the end: token_reduction = 1 - tokens(length) / tokens(none), and
accuracy_delta_points = 100 (accuracy(length) - accuracy(none)); the mean over seeds with a
95% t-interval. Writes OUT/length_penalty.png and benchmarks/results/length_penalty.json.

    python benchmarks/length_penalty.py                      # seeds 0,1,2 (lr 1e-4, one optimizer step per iteration)
    python benchmarks/length_penalty.py --seeds 0 --iterations 4 --prompts 4   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from long_cot import overthinking, plot_arms, run_arm
from results import write_result
from stats import t_interval


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=16)
    p.add_argument("--prompts", type=int, default=8, help="prompts per iteration (8 samples each)")
    p.add_argument("--weight", type=float, default=1.0, help="length reward weight after the warm-up")
    p.add_argument("--warmup", type=int, default=2, help="iterations without the length reward")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="with 4 steps per iteration, 2e-5 left right answers' redundancy half cut in 16 "
                        "iterations and 1e-4 lost accuracy; with 1 step, 1e-4 held it (docs/long_cot.md)")
    p.add_argument("--levels", default="1,2,3", help="subset_sum levels (1-3: most answers right, 140-350 tokens)")
    p.add_argument("--minibatches", type=int, default=1,
                   help="optimizer steps per iteration (4 at lr 1e-4 lost 12.2 held-out points over 3 seeds)")
    p.add_argument("--test-per-level", type=int, default=20)
    p.add_argument("--eval-samples", type=int, default=2, help="samples per held-out prompt (T = 1)")
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="every level 1-3 warm-up trace fits 1,024 tokens; past it a response is a runaway")
    p.add_argument("--out", default="runs/length_penalty")
    p.add_argument("--rerun", action="store_true")
    args = p.parse_args(argv)
    steps = min(args.minibatches, args.prompts)
    common = [f"iterations={args.iterations}", f"rollout.prompts_per_iteration={args.prompts}",
              f"algorithm.minibatches={steps}", f"data.train_levels=[{args.levels}]",
              f"data.test_levels=[{args.levels}]", f"data.test_per_level={args.test_per_level}",
              "data.train_per_level=150", f"algorithm.lr={args.lr}",
              f"rollout.max_new_tokens={args.max_new_tokens}", "eval.every=0",
              f"eval.samples_per_prompt={args.eval_samples}"]
    arms = {"none": ["reward.length_weight=0"],
            "length": [f"reward.length_weight={args.weight}", f"reward.length_warmup_iterations={args.warmup}"]}
    t0 = time.time()
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_arm(arm, seed, common + extra, out, args.rerun) for seed in seeds for arm, extra in arms.items()]
    by = {(r["arm"], r["seed"]): r for r in runs}
    per_seed = []
    for s in seeds:
        a, b = by["none", s], by["length", s]
        per_seed.append({
            "seed": s, "tokens_none": a["tokens_after"], "tokens_length": b["tokens_after"],
            "acc_none": a["acc_after"], "acc_length": b["acc_after"],
            "token_reduction": 1 - b["tokens_after"] / a["tokens_after"],
            "accuracy_delta_points": 100 * (b["acc_after"] - a["acc_after"]),
            "tokens_before": a["tokens_before"], "acc_before": a["acc_before"],
            "greedy_tokens_none": a["greedy_tokens_after"], "greedy_tokens_length": b["greedy_tokens_after"],
            "greedy_acc_none": a["greedy_acc_after"], "greedy_acc_length": b["greedy_acc_after"],
            "greedy_token_reduction": 1 - b["greedy_tokens_after"] / a["greedy_tokens_after"],
            "greedy_accuracy_delta_points": 100 * (b["greedy_acc_after"] - a["greedy_acc_after"]),
            # the right answers alone: what the length reward shortens, apart from how long wrong ones run
            "tokens_correct_none": a["tokens_correct_after"], "tokens_correct_length": b["tokens_correct_after"],
            "token_reduction_correct": 1 - b["tokens_correct_after"] / a["tokens_correct_after"]
            if a["tokens_correct_after"] and b["tokens_correct_after"] else None,  # None: an arm had no right answer
        })
    # How much each final model (and the start) still overthinks, on 20 held-out prompts per level
    levels = [int(x) for x in args.levels.split(",")]
    probe = lambda d: overthinking(d, levels, args.test_per_level, args.max_new_tokens)  # noqa: E731
    t_probe = time.time()
    over = {"start": probe("builtin-long"),
            **{arm: [probe(out / arm / f"seed{s}" / "final") for s in seeds] for arm in arms}}
    red = [x["token_reduction"] for x in per_seed]
    dacc = [x["accuracy_delta_points"] for x in per_seed]
    cut_right = [x["token_reduction_correct"] for x in per_seed if x["token_reduction_correct"] is not None]
    plot_arms(runs, out / "length_penalty.png",
              f"length penalty (weight {args.weight} after {args.warmup} iterations) vs none, {len(seeds)} seeds",
              panels=(("acc_curve", "held-out accuracy (sampled, T=1)", 100),
                      ("test_tokens_curve", "held-out mean response tokens", 1),
                      ("train_tokens_correct_curve", "training rollouts: mean tokens, right answers", 1),
                      ("train_tokens_wrong_curve", "training rollouts: mean tokens, wrong answers", 1)))
    result = {
        "seeds": seeds, "token_reduction": statistics.mean(red), "token_reduction_ci95": t_interval(red),
        "accuracy_delta_points": statistics.mean(dacc), "accuracy_delta_ci95": t_interval(dacc),
        "token_reduction_correct": statistics.mean(cut_right) if cut_right else None,
        "token_reduction_correct_ci95": t_interval(cut_right) if len(cut_right) > 1 else None,
        "goal": "token_reduction >= 0.30 with accuracy_delta_points >= -2",
        "greedy": {k: {"mean": statistics.mean(x[k] for x in per_seed), "ci95": t_interval([x[k] for x in per_seed])}
                   for k in ("greedy_token_reduction", "greedy_accuracy_delta_points")},
        "per_seed": per_seed, "iterations": args.iterations, "prompts_per_iteration": args.prompts,
        "samples_per_prompt": 8, "lr": args.lr, "weight": args.weight, "warmup_iterations": args.warmup, "levels": args.levels,
        "test_prompts": runs[0]["n_test"] // args.eval_samples, "eval_samples_per_prompt": args.eval_samples,
        "minibatches": steps, "max_new_tokens": args.max_new_tokens,
        "seconds_per_iteration": {arm: statistics.mean(r["seconds_per_iteration"] for r in runs if r["arm"] == arm)
                                  for arm in arms},
        "overthinking": over,
        "runs": [{k: v for k, v in r.items()} for r in runs],
    }
    # The runs' own wall time counts even when their folders were kept from an earlier call
    result["runs_wall_s"] = sum(r["wall_s"] for r in runs)
    result["overthinking_wall_s"] = time.time() - t_probe
    write_result("length_penalty", result, wall_s=result["runs_wall_s"] + result["overthinking_wall_s"])
    print(f"token reduction {100 * result['token_reduction']:.1f}% "
          f"[{100 * result['token_reduction_ci95'][0]:.1f}, {100 * result['token_reduction_ci95'][1]:.1f}], "
          f"accuracy {result['accuracy_delta_points']:+.1f} points "
          f"[{result['accuracy_delta_ci95'][0]:+.1f}, {result['accuracy_delta_ci95'][1]:+.1f}] "
          f"({(time.time() - t0) / 60:.1f} min); plot {out / 'length_penalty.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
