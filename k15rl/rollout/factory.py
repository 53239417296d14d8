"""The rollout engine a config asks for (`rollout.engine`)."""

from __future__ import annotations

import copy
from pathlib import Path

from k15rl.config import RolloutConfig
from k15rl.models.loading import model_positions
from k15rl.rollout.engine import HFEngine, RolloutEngine, SamplingParams


def context_length(cfg, model_config, prompt_limit: int | None) -> int:
    """Longest prompt + response a run's engine must hold: the prompt limit plus
    rollout.max_new_tokens (and eval.max_new_tokens), at most the model's context (test
    prompts that leave room for a longer evaluation budget are that much shorter:
    `prompt_token_limit`), or the model's context."""
    new = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
    positions = model_positions(model_config)
    if prompt_limit is not None:
        return min(prompt_limit + new, positions) if positions else prompt_limit + new
    return positions or 2048


def sampling_params(r: RolloutConfig, stop_token_ids: list[int], seed: int) -> SamplingParams:
    """How training rollouts sample (`rollout.*`): the one place a config becomes
    SamplingParams; evaluation and the other commands derive theirs from it."""
    return SamplingParams(
        max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, stop_token_ids=stop_token_ids,
        stop_strings=r.stop_strings, seed=seed, repeat_ngram=r.repeat_ngram, repeat_times=r.repeat_times,
        repeat_min_tokens=r.repeat_min_tokens,
    )


def make_engine(cfg: RolloutConfig, path: str | Path, tokenizer, *, model=None, dtype: str = "float32",
                max_model_len: int, seed: int = 0, share: bool = False) -> RolloutEngine:
    """An engine serving the policy stored at `path`.

    hf: continuous batching on a copy of `model` (or the model loaded from `path`);
    weights reach it through `load_weights` (the weight sync of report §2.6.1). With
    `share`, on `model` itself: the trainer's own parameters, no copy and nothing to sync
    (the local backend when the rollout does not overlap the update: `shares_weights`).
    vllm: a vLLM engine on `path` (optional extra, imported here only).
    `max_model_len`: the longest prompt + response the engine must hold.
    """
    if cfg.engine == "vllm":
        from k15rl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(path, tokenizer, cfg.vllm, max_model_len=max_model_len, seed=seed)
    if model is None:
        from k15rl.models.loading import load_model

        model = load_model(path, dtype)
    elif not share:
        model = copy.deepcopy(model)
    return HFEngine.from_config(model, tokenizer, cfg)
