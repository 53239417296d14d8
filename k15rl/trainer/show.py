"""`k15rl show RUN`: what a run folder holds, read from its files alone (no torch, no
model): a compact config, the latest metrics row, the evaluation table, checkpoints and
final/. Bad input is a UserError naming the path (and line)."""

from __future__ import annotations

from pathlib import Path

import yaml

from k15rl.errors import UserError
from k15rl.trainer.card import eval_table
from k15rl.trainer.jsonl import read_jsonl, torn_tail

# the main keys of a metrics.jsonl row, in this order; other loss/ keys follow
METRIC_KEYS = ("iteration", "reward/mean", "reward/accuracy", "rollout/len_mean", "rollout/len_max",
               "loss/policy", "loss/l2", "train/grad_norm", "time/iteration")
# config keys shown, as dotted paths
CONFIG_KEYS = ("out", "iterations", "seed", "model.path", "data.tasks", "data.train_files", "data.test_files",
               "sampler.name", "rollout.engine", "rollout.k", "rollout.prompts_per_iteration", "rollout.temperature",
               "rollout.max_new_tokens", "rollout.segment_tokens", "reward.length_weight",
               "reward.length_warmup_iterations", "reward.sources", "algorithm.loss", "algorithm.tau", "algorithm.lr",
               "eval.every", "eval.temperature", "distributed.backend")


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def show_run(folder: str | Path) -> str:
    """The text `k15rl show` prints for a run folder."""
    out = Path(folder)
    if out.is_file():
        raise UserError(f"{out}: is a file; give the run folder (out=)")
    if not out.is_dir():
        raise UserError(f"{out}: no such folder")
    cfg_path = out / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{out}: not a run folder (no config.yaml)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"{cfg_path}{f':{mark.line + 1}' if mark else ''}: not valid YAML") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: not a mapping of config keys")
    metrics, evals = read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "eval.jsonl")

    lines = [f"run {out}", "", "config (config.yaml):"]
    lines += [f"  {k:<36} {_fmt(v)}" for k in CONFIG_KEYS if (v := _get(cfg, k)) not in (None, [], "")]
    torn = [f"{name}: its last line was cut short (a killed write) and is left out; resuming drops it"
            for name in ("metrics.jsonl", "eval.jsonl") if torn_tail(out / name)]
    lines += ["", f"metrics (metrics.jsonl, {len(metrics)} rows):"]
    if metrics:
        last = metrics[-1]
        keys = [k for k in METRIC_KEYS if k in last] + sorted(
            k for k in last if k.startswith("loss/") and k not in METRIC_KEYS)
        lines += [f"  {k:<36} {_fmt(last[k])}" for k in keys]
    else:
        lines.append("  none yet")
    lines += ["", f"evaluation (eval.jsonl, {len(evals)} rows):"]
    lines += [f"  {r}" for r in eval_table(evals)] if evals else ["  none"]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("iter_*")
                         if (p / "state.json").is_file()) if (out / "checkpoints").is_dir() else []
    lines += ["", f"checkpoints: {', '.join(checkpoints) if checkpoints else 'none'}",
              f"final model: {out / 'final' if (out / 'final' / 'config.json').is_file() else 'none'}"]
    lines += [f"note: {t}" for t in torn]
    summary = out / "summary.json"
    if summary.is_file():
        lines.append(f"summary: {summary}")
    return "\n".join(lines)
