"""Config names that become things only above models/ and rewards/: a model path
("builtin" is built by the SFT warm-up on first use) and the reward router (its judge
model resolved the same way). The parts below the trainer receive folders, not names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from k15rl.config import TrainConfig
from k15rl.errors import UserError
from k15rl.models.builtin import BUILTIN_SPECS
from k15rl.models.loading import check_model_folder
from k15rl.rewards.compose import RewardFn, RewardRouter, check_reward_config, parse_sources
from k15rl.rewards.lookup import VERIFIERS, verifier_names
from k15rl.tasks import TASKS
from k15rl.trainer.warmup import ensure_builtin


def check_names(cfg: TrainConfig) -> TrainConfig:
    """The names of a config that registries resolve, checked against them: the built-in
    tasks (data.tasks), the default verifier (data.verifier) and the reward of each data
    source (reward.sources). Raises UserError naming the key; returns `cfg`."""
    for name in cfg.data.tasks or []:
        if name not in TASKS:
            raise UserError(f"config key data.tasks: unknown task {name!r} (built-in: {', '.join(sorted(TASKS))})")
    if cfg.data.verifier not in verifier_names():
        raise UserError(f"config key data.verifier: must be one of {sorted(VERIFIERS)} or a task name "
                        f"({', '.join(sorted(TASKS))}) (got {cfg.data.verifier!r})")
    check_reward_config(cfg.reward)
    return cfg


def resolve_model_path(path: str, key: str = "model.path", log: Callable[[str], None] = print) -> Path:
    """The model folder for `path`: a built-in spec's name ("builtin", "builtin-long":
    `BUILTIN_SPECS`, built and cached on first use) or a local Hugging Face folder; either
    is checked (`check_model_folder`: config.json, weights' headers, tokenizer files;
    UserError naming `key` and the file otherwise)."""
    built = path in BUILTIN_SPECS
    return check_model_folder(ensure_builtin(BUILTIN_SPECS[path], log=log) if built else path, key)


def router_from_config(reward_cfg: Any, log: Callable[[str], None] = print,
                       default: RewardFn | None = None) -> RewardRouter:
    """The router a `RewardConfig` describes (reward.sources, timeout_s, workers,
    judge_model; `default`: the reward of sources without an entry, instead of their task's
    verifier). When a source uses the judge, `reward.judge_model` is resolved here
    ("builtin": built on first use) and the judge gets its folder, and runs on
    reward.judge_device."""
    sources = parse_sources(reward_cfg.sources)
    judge = reward_cfg.judge_model
    if judge and "judge" in sources.values():
        judge = str(resolve_model_path(judge, "reward.judge_model", log))
    timeout = reward_cfg.timeout_s if reward_cfg.timeout_s > 0 else None
    return RewardRouter(sources, timeout_s=timeout, workers=reward_cfg.workers, judge_model=judge, default=default,
                        stuck_timeout_s=reward_cfg.stuck_timeout_s or None, judge_device=reward_cfg.judge_device)
