"""Sampling strategies and the length penalty on the built-in demo task (report §2.3.3,
§2.3.4), side by side: several seeds per arm, the same compute budget for every arm
(iterations x prompts per iteration x K samples), the demo preset otherwise.

    uniform      uniform sampling (the demo)
    curriculum   uniform warm-up for half the iterations, then only levels >= 4 (the
                 report's ablation: warm-up, then hard problems only)
    prioritized  probability proportional to 1 - s_p (smoothed prior 0.5, floor 0.05)
    length       uniform sampling, length reward weight 0.2 after a quarter of the
                 iterations (step schedule)

Writes OUT/<arm>/seed<S>/ (ordinary run folders), OUT/results.md (a Markdown table),
OUT/sampling_ablation.png (test accuracy and mean response tokens over iterations,
mean over seeds with the min-max band) and benchmarks/results/sampling_ablation.json
(every run's numbers; docs/data.md renders it).

    python benchmarks/sampling_ablation.py                          # full demo budget: ~8 min a run
    python benchmarks/sampling_ablation.py --iterations 16 --prompts 16 --test-per-level 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from results import write_result

ARMS: dict[str, list[str]] = {
    "uniform": ["sampler.name=uniform"],
    "curriculum": ["sampler.name=curriculum", "sampler.schedule=warmup_then_hard", "sampler.hard_min_level=4"],
    "prioritized": ["sampler.name=prioritized", "sampler.prior=0.5", "sampler.min_weight=0.05"],
    "length": ["sampler.name=uniform", "reward.length_weight=0.2"],
}


def arm_overrides(arm: str, args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    extra = list(ARMS[arm])
    if arm == "curriculum":
        extra.append(f"sampler.warmup_iterations={args.iterations // 2}")
    if arm == "length":
        extra.append(f"reward.length_warmup_iterations={args.iterations // 4}")
    return [
        f"out={out}", f"seed={seed}", f"iterations={args.iterations}",
        f"rollout.prompts_per_iteration={args.prompts}", f"data.test_per_level={args.test_per_level}",
        f"eval.every={args.eval_every}", f"threads={args.threads}",
        f"algorithm.minibatches={min(4, args.prompts)}", *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_one(arm: str, seed: int, args: argparse.Namespace) -> dict:
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    out = Path(args.out) / arm / f"seed{seed}"
    if (out / "summary.json").exists() and not args.rerun:
        print(f"{arm} seed {seed}: kept the finished run in {out}")
    else:
        cfg = load_config("demo", arm_overrides(arm, args, seed, out))
        t0 = time.time()
        train(cfg, overwrite=True, log=lambda s: None)
        print(f"{arm} seed {seed}: {time.time() - t0:.0f} s")
    summary = json.loads((out / "summary.json").read_text())
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    evals = read_jsonl(out / "eval.jsonl")
    sampled = [e for e in evals if e["temperature"] > 0]
    greedy = [e for e in evals if e["temperature"] == 0]
    return {
        "arm": arm, "seed": seed, "summary": summary,
        "acc_curve": [(e["iteration"], e["accuracy"]) for e in sampled],
        "tok_curve": [(m["iteration"], m["rollout/len_mean"]) for m in metrics],
        "acc_before": sampled[0]["accuracy"], "acc_after": sampled[-1]["accuracy"],
        "hard_before": statistics.mean(sampled[0]["per_level"][lv]["accuracy"]
                                       for lv in ("4", "5", "6") if lv in sampled[0]["per_level"]),
        "greedy_before": greedy[0]["accuracy"] if greedy else float("nan"),
        "greedy_after": greedy[-1]["accuracy"] if greedy else float("nan"),
        "test_tokens_before": sampled[0]["mean_tokens"], "test_tokens_after": sampled[-1]["mean_tokens"],
        "hard_after": statistics.mean(sampled[-1]["per_level"][lv]["accuracy"]
                                      for lv in ("4", "5", "6") if lv in sampled[-1]["per_level"]),
        "train_tokens": sum(m["rollout/len_mean"] * m.get("rollout/trained", args.prompts * 8) for m in metrics),
        "minutes": summary.get("wall_time_s", float("nan")) / 60,
    }


def mean_sd(xs: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    xs = [x * scale for x in xs]
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} +/- {fmt.format(statistics.stdev(xs))}"


def table(results: list[dict], args: argparse.Namespace) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in results))
    lines = [
        f"Budget: {args.iterations} iterations x {args.prompts} prompts x 8 samples per arm and seed; "
        f"{6 * args.test_per_level} test prompts ({args.test_per_level} per level); seeds "
        f"{', '.join(map(str, sorted({r['seed'] for r in results})))}. Mean +/- standard deviation over seeds.",
        "",
        "| arm | sampled acc. before (%) | sampled acc. after (%) | gain (points) | levels 4-6 after (%) "
        "| greedy after (%) | test tokens after | train tokens (M) | minutes per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        lines.append(
            f"| {arm} | {mean_sd([r['acc_before'] for r in rs], 100)} | {mean_sd([r['acc_after'] for r in rs], 100)} "
            f"| {mean_sd([r['acc_after'] - r['acc_before'] for r in rs], 100)} "
            f"| {mean_sd([r['hard_after'] for r in rs], 100)} | {mean_sd([r['greedy_after'] for r in rs], 100)} "
            f"| {mean_sd([r['test_tokens_after'] for r in rs])} "
            f"| {mean_sd([r['train_tokens'] for r in rs], 1e-6, '{:.2f}')} "
            f"| {mean_sd([r['minutes'] for r in rs])} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_tok) = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm in dict.fromkeys(r["arm"] for r in results):
        rs = [r for r in results if r["arm"] == arm]
        for ax, key in ((ax_acc, "acc_curve"), (ax_tok, "tok_curve")):
            its = [i for i, _ in rs[0][key]]
            ys = [[dict(r[key]).get(i, float("nan")) for r in rs] for i in its]
            mean = [statistics.mean(y) for y in ys]
            line, = ax.plot(its, mean, marker="o" if key == "acc_curve" else None, label=arm)
            if len(rs) > 1:
                ax.fill_between(its, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
    ax_acc.set_title("test accuracy (sampled, T=1)")
    ax_tok.set_title("mean response tokens (training rollouts)")
    for ax in (ax_acc, ax_tok):
        ax.set_xlabel("iteration")
        ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--prompts", type=int, default=32, help="prompts per iteration (8 samples each)")
    p.add_argument("--test-per-level", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run; 0 = all cores")
    p.add_argument("--out", default="runs/sampling_ablation")
    p.add_argument("--rerun", action="store_true", help="rerun arms whose run folder already holds a result")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    results = [run_one(arm, seed, args) for seed in seeds for arm in arms]
    out = Path(args.out)
    md = table(results, args)
    (out / "results.md").write_text(md)
    plot(results, out / "sampling_ablation.png")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    curves = ("acc_curve", "tok_curve", "summary")
    write_result("sampling_ablation", {
        "iterations": args.iterations, "prompts": args.prompts, "samples_per_prompt": 8,
        "test_per_level": args.test_per_level, "eval_every": args.eval_every, "threads": args.threads,
        "runs": [{k: v for k, v in r.items() if k not in curves} for r in results]})
    print(md)
    print(f"wrote {out / 'results.md'} and {out / 'sampling_ablation.png'} ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
