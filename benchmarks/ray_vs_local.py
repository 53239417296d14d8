"""One process vs the Ray backend on the demo configuration (docs/distributed.md).

Runs the demo configuration for a few iterations in one process (`distributed.backend=
local`, all cores) and on a local Ray cluster (2 rollout workers and 1 trainer worker,
1 torch thread each; optionally FSDP2 trainer workers), one after the other with the
same seed. Prints seconds per iteration (evaluations excluded), where the time goes,
the ratio, and the learning curves side by side; writes a plot and
benchmarks/results/ray_vs_local.json (ray_vs_local_overlap.json with --overlap), which
docs/distributed.md renders.

    python benchmarks/ray_vs_local.py --iterations 12          # about 10 minutes on 2 cores
    python benchmarks/ray_vs_local.py --trainer-workers 2      # adds an FSDP2 arm
    python benchmarks/ray_vs_local.py --overlap                # adds rollout.overlap on Ray
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results import write_result

from k15rl.config import load_config
from k15rl.trainer.loop import train


def run(name: str, iterations: int, eval_every: int, test_per_level: int, extra: list[str]) -> dict:
    out = Path(f"runs/bench_ray_{name}")
    cfg = load_config("demo", [f"out={out}", f"iterations={iterations}", f"eval.every={eval_every}",
                               f"data.test_per_level={test_per_level}", *extra])
    summary = train(cfg, overwrite=True, log=lambda s: None)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    mean = lambda k: sum(m[k] for m in metrics) / len(metrics)  # noqa: E731
    return {
        "name": name, "s_per_it": summary["train_time_s"] / summary["iterations"],
        "rollout": mean("time/rollout"), "train": mean("time/train"), "reward": mean("time/reward"),
        "acc": [m["reward/accuracy"] for m in metrics],
        "evals": [(e["iteration"], e["accuracy"]) for e in evals if e["temperature"] == cfg.eval.temperature],
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        a.plot(range(1, len(r["acc"]) + 1), r["acc"], label=r["name"])
        b.plot(*zip(*r["evals"]), marker="o", label=r["name"])
    a.set(xlabel="iteration", ylabel="train accuracy (sampled)", title="rollout accuracy")
    b.set(xlabel="iteration", ylabel="test accuracy (T=1)", title="held-out accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--eval-every", type=int, default=6)
    ap.add_argument("--test-per-level", type=int, default=50)
    ap.add_argument("--rollout-workers", type=int, default=2)
    ap.add_argument("--trainer-workers", type=int, default=1, help=">1 adds an FSDP2 arm")
    ap.add_argument("--overlap", action="store_true", help="adds Ray with rollout.overlap (and one process with it)")
    ap.add_argument("--plot", default=None,
                    help="default: docs/ray_vs_local.png, or docs/ray_vs_local_overlap.png with --overlap")
    ap.add_argument("--results-name", default=None,
                    help="benchmarks/results/NAME.json (default: ray_vs_local, or ray_vs_local_overlap with --overlap)")
    args = ap.parse_args()
    args.plot = args.plot or ("docs/ray_vs_local_overlap.png" if args.overlap else "docs/ray_vs_local.png")
    common = (args.iterations, args.eval_every, args.test_per_level)
    ray = ["distributed.backend=ray", f"distributed.rollout_workers={args.rollout_workers}",
           "distributed.cpus_per_worker=1"]
    arms = [("local", []), (f"ray {args.rollout_workers}R+1T", [*ray, "distributed.trainer_workers=1"])]
    if args.trainer_workers > 1:
        arms.append((f"ray {args.rollout_workers}R+{args.trainer_workers}T fsdp",
                     [*ray, f"distributed.trainer_workers={args.trainer_workers}"]))
    if args.overlap:
        arms += [("local overlap", ["rollout.overlap=true"]),
                 (f"ray {args.rollout_workers}R+1T overlap", [*ray, "distributed.trainer_workers=1",
                                                             "rollout.overlap=true"])]
    results = [run(name.split()[0] + str(i), *common, extra) | {"name": name} for i, (name, extra) in enumerate(arms)]
    base = results[0]["s_per_it"]
    print(f"demo configuration, {args.iterations} iterations each, seed 0")
    print(f"{'placement':22s} {'s/iteration':>11s} {'rollout':>8s} {'reward':>7s} {'train':>7s} {'vs local':>8s}"
          f"  test accuracy (iteration: acc)")
    for r in results:
        curve = " ".join(f"{i}:{100 * a:.1f}" for i, a in r["evals"])
        print(f"{r['name']:22s} {r['s_per_it']:11.2f} {r['rollout']:8.2f} {r['reward']:7.2f} {r['train']:7.2f} "
              f"{base / r['s_per_it']:7.2f}x  {curve}")
    plot(results, Path(args.plot))
    print(f"plot: {args.plot}")
    for r in results:
        r["vs_local"] = base / r["s_per_it"]
    write_result(args.results_name or ("ray_vs_local_overlap" if args.overlap else "ray_vs_local"), {
        "iterations": args.iterations, "eval_every": args.eval_every, "test_per_level": args.test_per_level,
        "rollout_workers": args.rollout_workers, "trainer_workers": args.trainer_workers, "plot": args.plot,
        "arms": results})


if __name__ == "__main__":
    main()
