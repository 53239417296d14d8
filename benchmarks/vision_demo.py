"""The vision demo (`k15rl demo --config vision`) over several seeds: held-out sampled
accuracy before and after RL, overall and per kind of visual data (report §2.3.5), with
95% intervals over seeds.

    python benchmarks/vision_demo.py                 # seeds 0,1,2, the preset as it is
    python benchmarks/vision_demo.py --seeds 0 iterations=10

Each seed is an ordinary run folder in OUT/seed<S>/ (the built-in VLM is built and warmed
up once, on first use, and cached: its build is not part of a run's wall time). Writes
OUT/vision_demo.png (test accuracy over iterations per kind, mean over seeds) and
benchmarks/results/vision_demo.json (docs/vision.md and the README render it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from results import write_result
from stats import t_interval

# The kinds of visual data of report §2.3.5 that the built-in tasks stand for.
KINDS = {"vis_count": "synthetic: counting shapes", "vis_where": "synthetic: spatial relations",
         "vis_pattern": "synthetic: geometric patterns", "vis_bars": "synthetic: chart reading",
         "vis_text": "text-rendered: arithmetic", "vis_sort": "text-rendered: letter sorting"}


def run_seed(seed: int, overrides: list[str], out: Path, rerun: bool) -> dict:
    from k15rl.api import train

    run = out / f"seed{seed}"
    if rerun or not (run / "summary.json").exists():
        t0 = time.time()
        train("vision", f"out={run}", f"seed={seed}", *overrides, overwrite=True, log=lambda s: None)
        print(f"seed {seed}: {(time.time() - t0) / 60:.1f} min")
    summary = json.loads((run / "summary.json").read_text())
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines() if x.strip()]
    sampled = [e for e in evals if e["temperature"] > 0]
    return {
        "seed": seed,
        "before": summary["test_accuracy_before"], "after": summary["test_accuracy_after"],
        "gain_points": summary["test_accuracy_gain_points"],
        "per_kind_before": summary.get("test_per_task_before", {}),
        "per_kind_after": summary.get("test_per_task_after", {}),
        "greedy_before": summary.get("test_accuracy_greedy_before"),
        "greedy_after": summary.get("test_accuracy_greedy_after"),
        "tokens_before": summary["test_mean_tokens_before"], "tokens_after": summary["test_mean_tokens_after"],
        "wall_s": summary["wall_time_s"], "eval_prompts": summary["eval_prompts"],
        "curve": [(e["iteration"], e["accuracy"], {k: v["accuracy"] for k, v in e.get("per_task", {}).items()})
                  for e in sampled],
    }


def plot(runs: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    its = [i for i, _, _ in runs[0]["curve"]]
    series = {"all": [[c[1] for c in r["curve"]] for r in runs]}
    for kind in KINDS:
        series[kind] = [[c[2].get(kind, float("nan")) for c in r["curve"]] for r in runs]
    for name, ys in series.items():
        mean = [100 * statistics.mean(col) for col in zip(*ys)]
        line, = ax.plot(its, mean, marker="o", lw=2.5 if name == "all" else 1.5,
                        label=name if name == "all" else KINDS[name])
        if len(ys) > 1:
            ax.fill_between(its, [100 * min(c) for c in zip(*ys)], [100 * max(c) for c in zip(*ys)],
                            color=line.get_color(), alpha=0.12)
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out accuracy, sampled at T=1 (%)")
    ax.set_title(f"vision demo: mean of {len(runs)} seed(s), band = min-max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/vision_demo")
    p.add_argument("--rerun", action="store_true", help="rerun seeds whose run folder already holds a result")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every seed")
    args = p.parse_args(argv)
    from k15rl.models.builtin import BUILTIN_SPECS
    from k15rl.trainer.warmup import ensure_builtin

    t0 = time.time()
    ensure_builtin(BUILTIN_SPECS["builtin-vision"])  # built once, before the timed runs
    build_s = time.time() - t0
    out = Path(args.out)
    runs = [run_seed(int(s), args.overrides, out, args.rerun) for s in args.seeds.split(",")]
    plot(runs, out / "vision_demo.png")
    gains = [r["gain_points"] for r in runs]
    per_kind = {k: {"before": statistics.mean(r["per_kind_before"].get(k, float("nan")) for r in runs),
                    "after": statistics.mean(r["per_kind_after"].get(k, float("nan")) for r in runs)}
                for k in KINDS}
    result = {
        "seeds": [r["seed"] for r in runs],
        "mean_gain_points": statistics.mean(gains),
        "gain_ci95": t_interval(gains),
        "per_seed": [{k: r[k] for k in ("seed", "before", "after", "gain_points", "greedy_before", "greedy_after",
                                         "tokens_before", "tokens_after", "wall_s")} for r in runs],
        "per_kind": {k: {"kind": KINDS[k], **v} for k, v in per_kind.items()},
        "max_wall_s_per_run": max(r["wall_s"] for r in runs),
        "eval_prompts": runs[0]["eval_prompts"],
        "overrides": args.overrides,
        "model_build_s": build_s,
        "curves": [r["curve"] for r in runs],
    }
    write_result("vision_demo", result)
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=1))
    print(f"plot: {out / 'vision_demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
