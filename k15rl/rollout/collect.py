"""Turn prompts into trajectories: K samples per prompt from a rollout engine."""

from __future__ import annotations

from typing import Sequence

from k15rl.models.loading import encode_prompt
from k15rl.rollout.engine import RolloutEngine, SamplingParams
from k15rl.types import GenerationRequest, Prompt, Trajectory


def rollout(
    engine: RolloutEngine,
    tokenizer,
    prompts: Sequence[Prompt],
    k: int,
    params: SamplingParams,
    first_group: int = 0,
) -> list[Trajectory]:
    """K trajectories for each prompt; prompt i's samples get group id first_group + i.

    Response text is decoded without special tokens; the EOS token stays in
    `response_ids` (the policy learns to stop) with its log-prob.
    """
    prompt_ids = [encode_prompt(tokenizer, p.messages) for p in prompts]
    requests = [GenerationRequest(prompt_ids[i]) for i in range(len(prompts)) for _ in range(k)]
    segments = engine.generate(requests, params)
    trajectories = []
    for j, seg in enumerate(segments):
        i = j // k
        trajectories.append(
            Trajectory(
                prompt=prompts[i],
                group=first_group + i,
                prompt_ids=prompt_ids[i],
                response_ids=seg.token_ids,
                logprobs=seg.logprobs,
                finish_reason=seg.finish_reason,
                text=tokenizer.decode(seg.token_ids, skip_special_tokens=True),
            )
        )
    return trajectories
