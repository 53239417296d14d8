"""PNG plots of a run: training reward, test accuracy, response length over iterations."""

from __future__ import annotations

from pathlib import Path


def plot_run(metrics: list[dict], evals: list[dict], dest: Path) -> Path:
    """Three panels side by side, written to `dest` (PNG). `evals` holds the rows of one
    evaluation temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    metrics = [m for m in metrics if "reward/mean" in m]  # iterations that trained (partial rollouts may skip)
    it = [m["iteration"] for m in metrics]
    axes[0].plot(it, [m["reward/mean"] for m in metrics], label="reward (total)")
    axes[0].plot(it, [m["reward/accuracy"] for m in metrics], label="train accuracy")
    axes[0].set_title("training reward")
    axes[0].set_xlabel("iteration")
    axes[0].legend()
    if evals:
        ei = [e["iteration"] for e in evals]
        axes[1].errorbar(ei, [e["accuracy"] for e in evals], yerr=[e["accuracy_ci95"] for e in evals],
                         marker="o", capsize=3, label="all levels")
        levels = sorted({lv for e in evals for lv in e["per_level"]}, key=int)
        for lv in levels:
            axes[1].plot(ei, [e["per_level"].get(lv, {}).get("accuracy", float("nan")) for e in evals],
                         alpha=0.5, linestyle="--", label=f"level {lv}")
        axes[1].legend(fontsize=7)
    axes[1].set_title("test accuracy")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].plot(it, [m["rollout/len_mean"] for m in metrics], label="mean")
    axes[2].plot(it, [m["rollout/len_max"] for m in metrics], label="max", alpha=0.6)
    axes[2].set_title("response length (tokens)")
    axes[2].set_xlabel("iteration")
    axes[2].legend()
    fig.tight_layout()
    dest = Path(dest)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest
