"""Token efficiency (report §2.4, Figure 7): accuracy against mean response tokens, per model.

Each model answers the same prompts with the same sampling settings; the table gives
accuracy and mean response tokens with 95% intervals, and both relative to the first
model (the reference, e.g. the long-CoT model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from k15rl.errors import UserError
from k15rl.types import Trajectory

REPORT_FILES = ("report.md", "report.json", "token_efficiency.png")  # what write_report writes into its folder


@dataclass
class ModelResult:
    """One model's evaluation. Intervals are 95% normal approximations over prompts."""

    label: str
    path: str
    accuracy: float
    accuracy_ci95: float
    mean_tokens: float
    mean_tokens_ci95: float
    n: int
    per_level: dict[str, dict] = field(default_factory=dict)


def model_result(label: str, path: str, trajectories: Sequence[Trajectory]) -> ModelResult:
    """Accuracy and mean tokens of scored trajectories (trainer.evaluate.summarize), with
    their 95% intervals over prompts (`ci95_over_prompts`)."""
    from k15rl.trainer.evaluate import ci95_over_prompts, summarize

    if not trajectories:
        raise UserError(f"long2short report: no prompt to evaluate {label} ({path}) on (none fits its context?)")
    s = summarize(trajectories)
    n = len(trajectories)
    mean = sum(t.num_tokens for t in trajectories) / n
    return ModelResult(label, str(path), s["accuracy"], s["accuracy_ci95"], mean,
                       ci95_over_prompts(trajectories, lambda t: t.num_tokens), n, s["per_level"])


def markdown_table(results: Sequence[ModelResult]) -> str:
    """Markdown table; the first row is the reference for the relative columns.

    >>> r = [ModelResult("long", "a", 0.8, 0.03, 100.0, 2.0, 600), ModelResult("short", "b", 0.78, 0.03, 60.0, 1.5, 600)]
    >>> print(markdown_table(r).splitlines()[3])
    | short | 78.0 +/- 3.0 | -2.0 | 60.0 +/- 1.5 | -40.0% | 13.0 |
    """
    ref = results[0]
    lines = ["| model | accuracy (%) | vs first (points) | mean tokens | vs first | correct per 1k tokens |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.label} | {100 * r.accuracy:.1f} +/- {100 * r.accuracy_ci95:.1f} | "
            f"{100 * (r.accuracy - ref.accuracy):+.1f} | {r.mean_tokens:.1f} +/- {r.mean_tokens_ci95:.1f} | "
            f"{100 * (r.mean_tokens / ref.mean_tokens - 1):+.1f}% | {1000 * r.accuracy / max(r.mean_tokens, 1e-9):.1f} |"
        )
    return "\n".join(lines)


def level_table(results: Sequence[ModelResult]) -> str:
    """Per-level accuracy and mean tokens, one column per model."""
    levels = sorted({lv for r in results for lv in r.per_level}, key=lambda x: (len(x), x))
    lines = ["| level | " + " | ".join(r.label for r in results) + " |", "|---|" + "---|" * len(results)]
    for lv in levels:
        cells = []
        for r in results:
            b = r.per_level.get(lv)
            cells.append(f"{100 * b['accuracy']:.0f}% / {b['mean_tokens']:.0f}" if b else "-")
        lines.append(f"| {lv} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_token_efficiency(results: Sequence[ModelResult], path: Path, title: str = "") -> None:
    """Scatter of accuracy against mean response tokens with 95% intervals (report Figure 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per method, one marker per seed ("DPO (seed 1)"), named in a legend beside
    # the axes: labels written next to the points overlap where methods cluster.
    methods: list[str] = []
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for r in results:
        method, _, seed = r.label.partition(" (seed ")
        seed = seed.rstrip(")")
        if method not in methods:
            methods.append(method)
        marker = "osD^v<>p"[int(seed) % 8] if seed.isdigit() else "o"
        ax.errorbar(r.mean_tokens, 100 * r.accuracy, xerr=r.mean_tokens_ci95, yerr=100 * r.accuracy_ci95,
                    fmt=marker, capsize=3, color=f"C{methods.index(method) % 10}", label=r.label, alpha=0.85)
    ax.set_xlabel("mean response tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "token efficiency (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: Sequence[ModelResult], out: Path, settings: dict) -> dict[str, Path]:
    """OUT/report.md, OUT/report.json and OUT/token_efficiency.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = (f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}. Intervals are 95%; relative "
          f"columns are against the first model.\n\n{markdown_table(results)}\n\nPer level (accuracy / mean tokens):"
          f"\n\n{level_table(results)}\n")
    paths = {kind: out / name for kind, name in zip(("md", "json", "png"), REPORT_FILES)}
    paths["md"].write_text(md)
    paths["json"].write_text(json.dumps({"settings": settings, "models": [asdict(r) for r in results]}, indent=2))
    plot_token_efficiency(results, paths["png"])
    return paths


def evaluate_models(models: Sequence[tuple[str, str]], prompts, cfg, samples_per_prompt: int = 1,
                    log=print) -> list[ModelResult]:
    """Evaluate each (label, folder) on `prompts` with `cfg`'s evaluation settings (a
    TrainConfig: eval.temperature, eval.max_new_tokens or rollout.max_new_tokens, seed):
    all of them on the prompts that fit every model's context."""
    from k15rl.data import fit_context, prompt_token_limit
    from k15rl.models.loading import load_model, load_tokenizer, on_device, stop_token_ids
    from k15rl.rollout.engine import HFEngine
    from k15rl.trainer.evaluate import eval_sampling_params, evaluate
    from k15rl.trainer.resolve import router_from_config

    from tqdm import tqdm

    from transformers import AutoConfig

    # every model on the same prompts: those that fit each one's context (with the response's budget)
    fitting = list(prompts)
    tokenizers = {path: load_tokenizer(path, cfg.model.chat_template) for _, path in models}
    for label, path in models:
        limit = prompt_token_limit(cfg, AutoConfig.from_pretrained(path), evaluation=True)
        fitting, _ = fit_context(fitting, tokenizers[path], limit, label, log)
    results = []
    for label, path in tqdm(models, desc="report", unit="model", dynamic_ncols=True):
        tok = tokenizers[path]
        model = on_device(load_model(path, cfg.model.dtype), cfg.distributed.device)
        params = eval_sampling_params(cfg, stop_token_ids(tok, model), seed=cfg.seed)
        _, trajs = evaluate(HFEngine.from_config(model, tok, cfg.rollout), tok, fitting, params, samples_per_prompt,
                            rewards=router_from_config(cfg.reward),
                            max_batch=cfg.eval.max_batch)
        r = model_result(label, str(path), trajs)
        log(f"{label}: accuracy {100 * r.accuracy:.1f}% +/- {100 * r.accuracy_ci95:.1f}, mean tokens "
            f"{r.mean_tokens:.1f} +/- {r.mean_tokens_ci95:.1f} (n={r.n})")
        results.append(r)
    return results
