"""Evaluation on held-out prompts: accuracy and mean response tokens, overall and per level;
the responses themselves as rows (`response_rows`)."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Callable, Sequence

from k15rl.rewards import score
from k15rl.rollout.collect import rollout
from k15rl.rollout.engine import RolloutEngine, SamplingParams
from k15rl.rollout.factory import sampling_params
from k15rl.types import Prompt, Trajectory


def response_rows(trajectories: Sequence[Trajectory]) -> list[dict]:
    """One JSON-ready row per sampled response: what it answered, what was asked and
    expected, and how it scored (`eval.save_responses`, `k15rl eval --responses`). Images
    are counted, not copied: the prompt id names them."""
    return [{
        "prompt_id": t.prompt.id, "task": t.prompt.task, "level": t.prompt.level, "sample": i,
        "question": t.prompt.meta.get("text_question", t.prompt.question), "images": len(t.prompt.images),
        "answer": t.prompt.answer, "response": t.text, "correct": t.correct, "reward": t.reward,
        "tokens": t.num_tokens, "finish_reason": str(t.finish_reason),
    } for t, i in zip(trajectories, _sample_index(trajectories))]


def _sample_index(trajectories: Sequence[Trajectory]) -> list[int]:
    """Each trajectory's index among the samples of its group (0 .. samples_per_prompt - 1)."""
    seen: dict[int, int] = defaultdict(int)
    out = []
    for t in trajectories:
        out.append(seen[t.group])
        seen[t.group] += 1
    return out


def ci95_over_prompts(trajectories: Sequence[Trajectory], value: Callable[[Trajectory], float]) -> float:
    """Half-width of a 95% normal-approximation interval of the mean of `value`, with the
    prompt as the unit: the samples of one prompt are not independent, so with several per
    prompt the spread is that of the prompts' means, over the number of prompts (samples
    alone would give too narrow an interval). One sample per prompt, or a single prompt:
    the usual sd / sqrt(n) of the samples (for a 0/1 value, the binomial one).

    >>> from k15rl.types import Prompt, Trajectory
    >>> p = Prompt("p", (("user", "q"),), "1", "integer")
    >>> ts = [Trajectory(p, g, [1], [1], [0.0], "stop", correct=c) for g, c in [(0, 1), (0, 1), (1, 0), (1, 0)]]
    >>> round(ci95_over_prompts(ts, lambda t: t.correct), 3)  # 2 prompts of means 1 and 0: sd 0.707
    0.98
    """
    by_prompt: dict[int, list[float]] = defaultdict(list)
    for t in trajectories:
        by_prompt[t.group].append(float(value(t)))
    if len(by_prompt) < 2 or all(len(v) == 1 for v in by_prompt.values()):
        xs = [x for v in by_prompt.values() for x in v]
        if set(xs) <= {0.0, 1.0}:  # binomial, floored so that 0% and 100% keep a width
            p = sum(xs) / len(xs)
            return 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / len(xs))
    else:
        xs = [sum(v) / len(v) for v in by_prompt.values()]
    n = len(xs)
    if n < 2:
        return 0.0
    mean = sum(xs) / n
    return 1.96 * math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)


def summarize(trajectories: Sequence[Trajectory]) -> dict:
    """Accuracy (with a 95% normal-approximation half-width over prompts:
    `ci95_over_prompts`) and mean response tokens (of all responses, and of the right
    ones), overall, per difficulty level, and per task (data source) when there are several
    (a mixed text and vision run, report §2.3.5)."""

    def block(ts: Sequence[Trajectory]) -> dict:
        n = len(ts)
        acc = sum(t.correct for t in ts) / n
        right = [t.num_tokens for t in ts if t.correct]
        return {
            "accuracy": acc,
            "accuracy_ci95": ci95_over_prompts(ts, lambda t: t.correct),
            "mean_tokens": sum(t.num_tokens for t in ts) / n,
            # of the right answers alone (None if there is none): what a length penalty shortens
            "mean_tokens_correct": sum(right) / len(right) if right else None,
            "n": n,
        }

    by_level: dict[int, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_level[t.prompt.level].append(t)
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_task[t.prompt.task].append(t)
    out = block(trajectories)
    out["per_level"] = {str(level): block(ts) for level, ts in sorted(by_level.items())}
    if len(by_task) > 1:
        out["per_task"] = {task: block(ts) for task, ts in sorted(by_task.items())}
    return out


def eval_sampling_params(cfg, stop_token_ids: list[int], seed: int) -> SamplingParams:
    """Sampling settings of an evaluation (a TrainConfig's `eval` over its `rollout`):
    every answer runs to its end (no repeat detection: that saves rollout time in training,
    it is not part of the policy being measured)."""
    return dataclasses.replace(
        sampling_params(cfg.rollout, stop_token_ids, seed),
        max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, temperature=cfg.eval.temperature,
        repeat_ngram=0,
    )


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    samples_per_prompt: int = 1,
    rewards=None,
    max_batch: int = 0,
) -> tuple[dict, list[Trajectory]]:
    """Sample `samples_per_prompt` responses per prompt (temperature 0: greedy) and score them
    (`rewards`: a RewardRouter, as in training). `max_batch` > 0 (eval.max_batch): the
    prompts go to the engine in chunks of at most that many samples (at least one prompt),
    chunk c > 0 sampled with seed params.seed + c x 1000003 so chunks draw independently."""
    per = max(1, max_batch // samples_per_prompt) if max_batch else max(len(prompts), 1)
    trajectories = []
    for c, lo in enumerate(range(0, len(prompts), per)):
        chunk_params = dataclasses.replace(params, seed=params.seed + c * 1000003) if c else params
        trajectories += rollout(engine, tokenizer, prompts[lo:lo + per], samples_per_prompt, chunk_params,
                                first_group=lo)
    score(trajectories, rewards=rewards)
    return summarize(trajectories), trajectories
