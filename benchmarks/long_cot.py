"""The long-CoT proving ground shared by its benchmarks (length_penalty.py, ...).

The workload: `subset_sum` (depth-first search traces, long and heavy-tailed, with
controllable overthinking) on the `builtin-long` model (6 x 256, 2,048 positions, warmed up
on those traces and cached). `BASE` is the RL configuration every arm starts from; an arm
adds its own overrides. `run_arm` trains one arm and seed as an ordinary run folder (kept:
a second call reads it back) and returns what the benchmarks compare.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

# Every arm's starting point (the demo preset's algorithm, the long-CoT data and model).
BASE = [
    "model.path=builtin-long",
    "data.tasks=[subset_sum]",
    "data.train_per_level=1000",
    "rollout.k=8",
    "rollout.temperature=1.0",
    "rollout.max_batch=128",
    "algorithm.loss=k15",
    "algorithm.tau=0.1",
    "algorithm.lr=3.0e-5",
    "algorithm.micro_batch_tokens=16384",
    "eval.temperature=1.0",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_arm(name: str, seed: int, overrides: list[str], out_root: Path, rerun: bool = False) -> dict:
    """Train arm `name` with `seed` (BASE, then `overrides`) in out_root/name/seed<S>/, unless
    a finished run is there; returns its curves and before/after numbers."""
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    out = out_root / name / f"seed{seed}"
    if rerun or not (out / "summary.json").exists():
        cfg = load_config(None, [*BASE, f"out={out}", f"seed={seed}", *overrides])
        t0 = time.time()
        train(cfg, overwrite=True, log=lambda s: None)
        print(f"{name} seed {seed}: {(time.time() - t0) / 60:.1f} min", flush=True)
    summary = json.loads((out / "summary.json").read_text())
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    sampled = [e for e in read_jsonl(out / "eval.jsonl") if e["temperature"] > 0]
    return {
        "arm": name, "seed": seed,
        "acc_before": sampled[0]["accuracy"], "acc_after": sampled[-1]["accuracy"],
        "tokens_before": sampled[0]["mean_tokens"], "tokens_after": sampled[-1]["mean_tokens"],
        "n_test": sampled[-1]["n"],
        "acc_curve": [(e["iteration"], e["accuracy"]) for e in sampled],
        "test_tokens_curve": [(e["iteration"], e["mean_tokens"]) for e in sampled],
        "train_tokens_curve": [(m["iteration"], m["rollout/len_mean"]) for m in metrics],
        "train_acc_curve": [(m["iteration"], m["reward/accuracy"]) for m in metrics],
        "seconds_per_iteration": statistics.mean(m["time/iteration"] for m in metrics)
        if metrics else None,
        "wall_s": summary["wall_time_s"],
    }


def plot_arms(runs: list[dict], dest: Path, title: str) -> None:
    """Held-out accuracy and mean tokens over iterations, per arm (mean over seeds, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("acc_curve", "held-out accuracy (sampled, T=1)", 100), ("test_tokens_curve",
              "held-out mean response tokens", 1), ("train_tokens_curve", "training rollouts: mean tokens", 1))
    for ax, (key, label, scale) in zip(axes, panels):
        for arm in dict.fromkeys(r["arm"] for r in runs):
            rs = [r for r in runs if r["arm"] == arm]
            its = [i for i, _ in rs[0][key]]
            cols = [[scale * dict(r[key]).get(i, float("nan")) for r in rs] for i in its]
            line, = ax.plot(its, [statistics.mean(c) for c in cols], marker="o" if key != "train_tokens_curve"
                            else None, label=arm)
            if len(rs) > 1:
                ax.fill_between(its, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(),
                                alpha=0.15)
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
