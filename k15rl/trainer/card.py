"""Model cards: the README.md of every Hugging Face folder k15rl writes (a run's final/
and checkpoints, SFT, DPO and merged models), in the format of Hugging Face model cards:
YAML front matter (`library_name`, `base_model`, `tags`), then how the model was made.

`model_card` builds the text from plain values; `run_card` fills it from an RL run's
config (a `TrainConfig` or its `to_dict`), its iterations and its eval.jsonl rows. No
torch, no config import: the command line, the loop and checkpoint.py all call these.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import yaml

CARD = "README.md"


def package_version() -> str:
    """The installed k15rl's version (importlib.metadata), else the source's `__version__`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("k15rl")
    except PackageNotFoundError:
        from k15rl import __version__

        return __version__


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) or "none"
    return str(v)


def eval_table(evals: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown rows of eval.jsonl rows: iteration, temperature, accuracy +/- ci95, mean tokens.

    >>> print("\\n".join(eval_table([{"iteration": 0, "temperature": 1.0, "accuracy": 0.5,
    ...                               "accuracy_ci95": 0.1, "mean_tokens": 12.34, "n": 8}])))
    | iteration | temperature | accuracy | mean tokens | n |
    |---:|---:|---:|---:|---:|
    | 0 | 1 | 0.500 ± 0.100 | 12.3 | 8 |
    """
    rows = ["| iteration | temperature | accuracy | mean tokens | n |", "|---:|---:|---:|---:|---:|"]
    for e in evals:
        rows.append(f"| {e.get('iteration', '?')} | {_fmt(e.get('temperature', '?'))} | "
                    f"{e.get('accuracy', float('nan')):.3f} ± {e.get('accuracy_ci95', float('nan')):.3f} | "
                    f"{e.get('mean_tokens', float('nan')):.1f} | {e.get('n', '?')} |")
    return rows


def model_card(*, base_model: str, kind: str, recipe: Mapping[str, Any], data: Sequence[str],
               iterations: int | None = None, evals: Sequence[Mapping[str, Any]] = (),
               version: str | None = None, tags: Sequence[str] = ()) -> str:
    """README.md text: front matter, then the recipe, data sources, iterations done, the
    evaluation table (if any) and the k15rl version.

    >>> text = model_card(base_model="builtin", kind="rl", recipe={"loss": "k15", "tau": 0.1},
    ...                   data=["task sort"], iterations=3, version="0.1.0")
    >>> meta = yaml.safe_load(text.split("---")[1])
    >>> meta["base_model"], meta["library_name"], meta["tags"][:2]
    ('builtin', 'transformers', ['k15rl', 'reinforcement-learning'])
    >>> "| loss | k15 |" in text and "Iterations done: 3" in text and "k15rl 0.1.0" in text
    True
    """
    version = version or package_version()
    default_tags = {"rl": ["reinforcement-learning", "kimi-k1.5"], "sft": ["sft"], "dpo": ["dpo", "long2short"],
                    "merge": ["merge", "long2short"]}.get(kind, [])
    front = {"library_name": "transformers", "base_model": str(base_model),
             "tags": list(dict.fromkeys(["k15rl", *default_tags, *tags]))}
    title = {"rl": "RL (Kimi k1.5 recipe)", "sft": "supervised fine-tuning", "dpo": "DPO (long2short)",
             "merge": "model merge (long2short)"}.get(kind, kind)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {title} of {base_model}", "",
             f"Trained with k15rl {version}, starting from `{base_model}`.", "",
             "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in recipe.items()]
    lines += ["", "## Data", ""] + [f"- {d}" for d in data or ["(none recorded)"]]
    if iterations is not None:
        lines += ["", f"Iterations done: {iterations}"]
    if evals:
        lines += ["", "## Evaluation (held-out prompts)", "", *eval_table(evals)]
    lines += ["", f"Written by k15rl {version}.", ""]
    return "\n".join(lines)


def run_card(cfg: Any, iterations: int, evals: Sequence[Mapping[str, Any]] = ()) -> str:
    """The card of an RL run's model: `cfg` a TrainConfig or its dict (config.yaml)."""
    c = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    a, r, w = c.get("algorithm", {}), c.get("rollout", {}), c.get("reward", {})
    d = c.get("data", {})
    recipe = {"loss": a.get("loss"), "tau": a.get("tau"), "lr": a.get("lr"), "k": r.get("k"),
              "prompts_per_iteration": r.get("prompts_per_iteration"), "max_new_tokens": r.get("max_new_tokens"),
              "temperature": r.get("temperature"), "length penalty weight": w.get("length_weight"),
              "length penalty warm-up iterations": w.get("length_warmup_iterations"),
              "sampler": c.get("sampler", {}).get("name")}
    lo = c.get("model", {}).get("lora", {})
    if lo.get("rank"):  # LoRA (k15rl/models/lora.py): the folder holds merged weights, the adapter in adapter/
        recipe.update({"LoRA rank": lo["rank"], "LoRA alpha": lo.get("alpha"), "LoRA dropout": lo.get("dropout"),
                       "LoRA target modules": lo.get("target_modules"),
                       "LoRA weights": "merged into this folder; the adapter alone (peft) in adapter/"})
    data = []
    if d.get("tasks"):
        data.append(f"built-in tasks: {_fmt(d['tasks'])} (levels {_fmt(d.get('train_levels', []))})")
    data += [f"train file: {f}" for f in d.get("train_files", [])]
    data += [f"test file: {f}" for f in d.get("test_files", [])]
    return model_card(base_model=c.get("model", {}).get("path", "unknown"), kind="rl",
                      recipe={k: v for k, v in recipe.items() if v is not None}, data=data,
                      iterations=iterations, evals=evals,
                      tags=[*([a["loss"]] if a.get("loss") else []), *(["lora"] if lo.get("rank") else [])])
