"""Turn prompts into trajectories: K samples per prompt from a rollout engine.

`rollout` samples whole responses (evaluation, and training without partial rollouts).
`partial_rollout` is one iteration of report §2.6.2: continue the replay buffer's cut
trajectories, start the new prompts' groups, give every trajectory at most
`segment_tokens` new tokens (and the iteration at most `token_budget`), and release the
groups whose members have all finished.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

from k15rl.models.loading import encode_prompt
from k15rl.rollout.engine import RolloutEngine, SamplingParams
from k15rl.rollout.replay import Member, ReplayBuffer
from k15rl.tasks import repeats_by_design
from k15rl.types import GenerationRequest, Outcome, Prompt, Segment, Trajectory

OUTCOMES: tuple[Outcome, ...] = ("stop", "cut", "repeat", "max_len")


def rollout(
    engine: RolloutEngine,
    tokenizer,
    prompts: Sequence[Prompt],
    k: int,
    params: SamplingParams,
    first_group: int = 0,
) -> list[Trajectory]:
    """K whole trajectories for each prompt; prompt i's samples get group id first_group + i.

    Response text is decoded without special tokens; the EOS token stays in
    `response_ids` (the policy learns to stop) with its log-prob.
    """
    prompt_ids = [encode_prompt(tokenizer, p.messages, p.images) for p in prompts]
    requests = [GenerationRequest(prompt_ids[i], id=f"g{first_group + i}m{j}", images=prompts[i].images,
                                  repeat_check=not repeats_by_design(prompts[i].task))
                for i in range(len(prompts)) for j in range(k)]
    segments = engine.generate(requests, params)
    return [
        _trajectory(tokenizer, Member(prompts[j // k], first_group + j // k, prompt_ids[j // k], seg.token_ids,
                                      seg.logprobs, outcome=_outcome(seg, len(seg.token_ids), params.max_new_tokens)))
        for j, seg in enumerate(segments)
    ]


@dataclass
class PartialRolloutResult:
    """What one iteration of partial rollouts produced."""

    trajectories: list[Trajectory]  # members of the groups completed this iteration, oldest group first
    outcomes: Counter = field(default_factory=Counter)  # outcome of each segment generated this iteration
    tokens_generated: int = 0
    continued: int = 0  # cut trajectories resumed from the buffer this iteration
    not_started: int = 0  # trajectories the token budget left unstarted (they wait in the buffer)
    next_group: int = 0  # first free group id
    groups: list[list[Member]] = field(default_factory=list)  # the completed groups themselves (`put_back`)


def put_back(buffer: ReplayBuffer, result: PartialRolloutResult) -> None:
    """Return a rollout's completed groups to the buffer, not trained on: a run that stops
    with a rollout done ahead (rollout.overlap, out of time) checkpoints them, and the
    resumed run trains on them first (`release_complete`) instead of losing them."""
    for group in result.groups:
        buffer.add_group(group)


def release_complete(tokenizer, buffer: ReplayBuffer, next_group: int) -> PartialRolloutResult | None:
    """The buffer's completed groups as a rollout's result, generating nothing; None if it
    holds none. Only a resumed run's buffer does (`put_back`)."""
    groups, trajectories = _pop_complete(tokenizer, buffer)
    return PartialRolloutResult(trajectories, next_group=next_group, groups=groups) if groups else None


def _pop_complete(tokenizer, buffer: ReplayBuffer) -> tuple[list[list[Member]], list[Trajectory]]:
    """The buffer's completed groups, removed from it, and their members as trajectories."""
    groups = buffer.pop_complete()
    return groups, [_trajectory(tokenizer, m) for group in groups for m in group]


def partial_rollout(
    engine: RolloutEngine,
    tokenizer,
    buffer: ReplayBuffer,
    prompts: Sequence[Prompt],
    k: int,
    params: SamplingParams,
    *,
    version: int,
    segment_tokens: int,
    max_tokens: int,
    first_group: int,
    keep_kv: bool = False,
    token_budget: int = 0,
) -> PartialRolloutResult:
    """One rollout phase with partial rollouts (report §2.6.2).

    The buffer's unfinished trajectories are continued first (their requests come first,
    so they take the first slots), then K new trajectories per prompt are started as new
    groups. Every trajectory gets at most `segment_tokens` new tokens (0: no cut) and
    at most `max_tokens` in total. A segment that hits the budget with room left is
    `cut` and stays in the buffer; at `max_tokens` it is `max_len`. Every token records
    `version`, the policy that sampled it. `keep_kv`: a cut trajectory's KV cache stays in
    the engine for its continuation (rollout.keep_kv; engines that cannot keep it ignore it).

    `token_budget` (rollout.iteration_tokens; 0: none) is the iteration's output-token
    budget (§2.6.2): all the buffer's unfinished trajectories are handed to the engine,
    more than its slots, so a slot freed by a finished trajectory takes the next one at
    once; when the budget is spent, the trajectories in flight are cut and those not
    started yet wait in the buffer, first in line next iteration.
    """
    segment = segment_tokens or max_tokens
    continued = buffer.unfinished()  # cut ones, and (token budget) ones not started yet
    resumed = sum(bool(m.response_ids) for m in continued)
    for i, p in enumerate(prompts):
        ids = encode_prompt(tokenizer, p.messages, p.images)
        buffer.add_group([Member(p, first_group + i, ids, index=j) for j in range(k)])
    active = continued + [m for i in range(len(prompts)) for m in buffer.groups[first_group + i]]
    budgets = [min(segment, max_tokens - len(m.response_ids)) for m in active]
    requests = [
        GenerationRequest(m.prompt_ids, m.response_ids, max_new_tokens=b, id=f"g{m.group}m{m.index}",
                          images=m.prompt.images, repeat_check=not repeats_by_design(m.prompt.task),
                          keep_kv=keep_kv and (len(m.response_ids) + b < max_tokens or bool(token_budget)))
        for m, b in zip(active, budgets)
    ]
    budget = {"token_budget": token_budget} if token_budget else {}  # only when set (RolloutEngine)
    segments = engine.generate(requests, replace(params, max_new_tokens=segment), **budget)
    outcomes: Counter = Counter()
    not_started = 0
    for m, seg in zip(active, segments):
        if not seg.started:  # the budget ran out before its turn
            not_started += 1
            continue
        m.response_ids = m.response_ids + seg.token_ids
        m.logprobs = m.logprobs + seg.logprobs
        m.versions = m.versions + [version] * len(seg.token_ids)
        out = _outcome(seg, len(m.response_ids), max_tokens)
        m.outcome = None if out == "cut" else out
        outcomes[out] += 1
    complete, trajectories = _pop_complete(tokenizer, buffer)
    return PartialRolloutResult(
        trajectories=trajectories,
        outcomes=outcomes,
        tokens_generated=sum(len(s.token_ids) for s in segments),
        continued=resumed,
        not_started=not_started,
        next_group=first_group + len(prompts),
        groups=complete,
    )


def _outcome(seg: Segment, total_tokens: int, max_tokens: int) -> Outcome:
    if seg.finish_reason != "length":
        return seg.finish_reason  # "stop" or "repeat"
    return "max_len" if total_tokens >= max_tokens else "cut"


def _trajectory(tokenizer, m: Member) -> Trajectory:
    assert m.outcome is not None
    return Trajectory(
        prompt=m.prompt,
        group=m.group,
        prompt_ids=m.prompt_ids,
        response_ids=m.response_ids,
        logprobs=m.logprobs,
        finish_reason=m.outcome,
        text=tokenizer.decode(m.response_ids, skip_special_tokens=True),
        versions=m.versions,
    )
