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
    evals = read_jsonl(out / "eval.jsonl")
    sampled = [e for e in evals if e["temperature"] > 0]
    greedy = [e for e in evals if e["temperature"] == 0]  # at the start and the end
    return {
        "arm": name, "seed": seed,
        "acc_before": sampled[0]["accuracy"], "acc_after": sampled[-1]["accuracy"],
        "tokens_before": sampled[0]["mean_tokens"], "tokens_after": sampled[-1]["mean_tokens"],
        "tokens_correct_before": sampled[0].get("mean_tokens_correct"),
        "tokens_correct_after": sampled[-1].get("mean_tokens_correct"),
        "n_test": sampled[-1]["n"],
        "greedy_acc_before": greedy[0]["accuracy"] if greedy else None,
        "greedy_acc_after": greedy[-1]["accuracy"] if greedy else None,
        "greedy_tokens_before": greedy[0]["mean_tokens"] if greedy else None,
        "greedy_tokens_after": greedy[-1]["mean_tokens"] if greedy else None,
        "acc_curve": [(e["iteration"], e["accuracy"]) for e in sampled],
        "test_tokens_curve": [(e["iteration"], e["mean_tokens"]) for e in sampled],
        "train_tokens_curve": [(m["iteration"], m["rollout/len_mean"]) for m in metrics],
        "train_acc_curve": [(m["iteration"], m["reward/accuracy"]) for m in metrics],
        "train_tokens_correct_curve": [(m["iteration"], m["rollout/len_mean_correct"]) for m in metrics
                                       if "rollout/len_mean_correct" in m],
        "train_tokens_wrong_curve": [(m["iteration"], m["rollout/len_mean_wrong"]) for m in metrics
                                     if "rollout/len_mean_wrong" in m],
        "seconds_per_iteration": statistics.mean(m["time/iteration"] for m in metrics)
        if metrics else None,
        "wall_s": summary["wall_time_s"],
    }


def redundant_text(response: str) -> str:
    """The part of a subset_sum response after its first check line and before its answer
    line: empty for a concise trace; the search-on and the re-checks for one that overthinks
    (k15rl/tasks/subset_sum.py)."""
    lines = response.split("\n")
    first = next((i for i, x in enumerate(lines) if x.startswith("check:")), None)
    end = next((i for i, x in enumerate(lines) if x.startswith("answer:")), len(lines))
    return "\n".join(lines[first + 1:end]) if first is not None and first < end else ""


def overthinking(model_dir: Path | str, levels: list[int], n_per_level: int, max_new_tokens: int,
                 seed: int = 0) -> dict:
    """How much a model overthinks: one sample (T = 1) per held-out `subset_sum` prompt;
    accuracy, mean tokens, the share of responses that search on or check again after their
    first check, and the mean tokens of that redundant part (`redundant_text`)."""
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.rewards import score
    from k15rl.rollout.collect import rollout
    from k15rl.rollout.engine import HFEngine, SamplingParams
    from k15rl.tasks import get_task, make_prompts
    from k15rl.trainer.resolve import resolve_model_path

    path = resolve_model_path(str(model_dir), "model")
    model, tok = load_model(path), load_tokenizer(path)
    prompts = make_prompts(get_task("subset_sum"), "test", n_per_level, tuple(levels), seed)
    trajs = rollout(HFEngine(model, tok, max_batch=128), tok, prompts, 1,
                    SamplingParams(max_new_tokens, temperature=1.0, seed=seed, stop_token_ids=[tok.eos_token_id]))
    score(trajs)
    extra = [len(tok.encode(redundant_text(t.text), add_special_tokens=False)) for t in trajs]
    correct = [i for i, t in enumerate(trajs) if t.correct]
    return {"n": len(trajs), "accuracy": len(correct) / len(trajs),
            "mean_tokens": statistics.mean(t.num_tokens for t in trajs),
            "overthinking_frac": statistics.mean(x > 0 for x in extra),
            "overthinking_frac_correct": statistics.mean(extra[i] > 0 for i in correct) if correct else None,
            "redundant_tokens_mean": statistics.mean(extra),
            "redundant_tokens_mean_correct": statistics.mean(extra[i] for i in correct) if correct else None}


PANELS = (("acc_curve", "held-out accuracy (sampled, T=1)", 100),
          ("test_tokens_curve", "held-out mean response tokens", 1),
          ("train_tokens_curve", "training rollouts: mean tokens", 1))


def plot_arms(runs: list[dict], dest: Path, title: str, panels: tuple = PANELS) -> None:
    """Curves over iterations, per arm (mean over seeds, min-max band): by default held-out
    accuracy and mean tokens and training tokens; `panels`: (run key, title, scale) each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (key, label, scale) in zip(axes, panels):
        for arm in dict.fromkeys(r["arm"] for r in runs):
            rs = [r for r in runs if r["arm"] == arm]
            its = [i for i, _ in rs[0][key]]
            cols = [[scale * dict(r[key]).get(i, float("nan")) for r in rs] for i in its]
            line, = ax.plot(its, [statistics.mean(c) for c in cols], marker=None if key.startswith("train_")
                            else "o", label=arm)
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
