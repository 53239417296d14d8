"""Rewards (report §2.3.3, §2.3.5): verifiers give r in {0, 1}; shaping terms add to it.

`score` fills in each trajectory's `correct`, `reward` and `reward_terms`. A verifier is
looked up by the prompt's task name (`lookup.verifier_for`, the one place), so new tasks
and rewards plug in without touching the training loop. The verifiers themselves, and
the code sandbox, are `k15rl.verifiers` (below the tasks, which use them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from k15rl.rewards.compose import PROMPT_REWARDS, RewardRouter
from k15rl.rewards.length import length_reward, length_weight
from k15rl.rewards.lookup import VERIFIERS, verifier_for
from k15rl.types import Trajectory
from k15rl.verifiers import Verifier

log = logging.getLogger(__name__)


@dataclass
class ScoreStats:
    verifier_errors: int = 0
    reward_timeouts: int = 0
    judge_no_verdict: int = 0  # judge outputs without a verdict (scored 0)


def score(
    trajectories: Sequence[Trajectory],
    *,
    length_penalty_weight: float = 0.0,
    repeat_penalty: float = 0.0,
    rewards: "RewardRouter | None" = None,
) -> ScoreStats:
    """Verify every trajectory and set its total reward r + w * len_reward (§2.3.3).

    A trajectory stopped by repeat detection (report §2.6.2) also gets
    `-repeat_penalty` (term "repeat").

    A verifier that raises scores the sample 0; the error is counted and logged, and
    training continues. `rewards` (a `RewardRouter`, the trainer's `router_from_config(cfg.reward)`)
    picks each data source's reward function and runs them in parallel with a time
    limit; prompts of code tasks go through one even when it is not given.
    """
    stats = ScoreStats()
    routed = rewards is not None or any(t.prompt.task in PROMPT_REWARDS for t in trajectories)
    if routed:
        # per-source reward functions, in parallel, with time limits (rewards/compose.py)
        router = rewards if rewards is not None else RewardRouter()
        outcomes, rstats = router.score([t.text for t in trajectories], [t.prompt for t in trajectories])
        stats.verifier_errors += rstats.errors
        stats.reward_timeouts += rstats.timeouts
        stats.judge_no_verdict += rstats.no_verdict
        for t, o in zip(trajectories, outcomes):
            t.correct = o.value >= 1.0
            t.reward_terms = {"task": o.value}
    cache: dict[str, Verifier] = {}
    for t in () if routed else trajectories:
        if t.prompt.task not in cache:
            cache[t.prompt.task] = verifier_for(t.prompt.task)
        verify = cache[t.prompt.task]
        try:
            t.correct = bool(verify(t.text, t.prompt.answer))
        except Exception as e:  # a broken verifier must not stop training
            stats.verifier_errors += 1
            log.warning("verifier for task %s raised %s: %s", t.prompt.task, type(e).__name__, e)
            t.correct = False
        t.reward_terms = {"task": float(t.correct)}
    if length_penalty_weight > 0 and trajectories:
        lr = length_reward(
            torch.tensor([t.num_tokens for t in trajectories]),
            torch.tensor([t.correct for t in trajectories]),
            torch.tensor([t.group for t in trajectories]),
        )
        for t, v in zip(trajectories, lr.tolist()):
            t.reward_terms["length"] = length_penalty_weight * v
    if repeat_penalty:
        for t in trajectories:
            if t.finish_reason == "repeat":
                t.reward_terms["repeat"] = -repeat_penalty
    for t in trajectories:
        t.reward = sum(t.reward_terms.values())
    return stats


__all__ = [
    "VERIFIERS",
    "RewardRouter",
    "ScoreStats",
    "length_reward",
    "length_weight",
    "score",
    "verifier_for",
]
