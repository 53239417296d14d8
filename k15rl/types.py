"""Plain data objects exchanged between components.

Every component (task, sampler, rollout engine, reward, algorithm, trainer) talks to
the others only through these dataclasses. They hold Python lists and numbers, not
model objects, so they can cross a process or Ray actor boundary unchanged.

Letters used for shapes throughout the package:
    N  number of samples (trajectories) in a batch = prompts x K
    K  samples per prompt (the group size of report §2.3.2)
    T  padded response length in tokens
    P  padded prompt length in tokens
    V  vocabulary size
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Why an engine stopped a segment: EOS or a stop string; its token budget; repeat detection.
SegmentEnd = Literal["stop", "length", "repeat"]
# A trajectory's outcome (report §2.6.2): normal stop; cut by the per-iteration budget and
# saved for continuation; stopped early by repeat detection; hit the global maximum length.
Outcome = Literal["stop", "cut", "repeat", "max_len"]


@dataclass(frozen=True)
class Prompt:
    """One problem x with its ground truth y* (report §2.3.1).

    `messages` is the chat the model sees (rendered by the tokenizer's chat template);
    `answer` is what the verifier compares against; `task` names the verifier.
    """

    id: str
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...)
    answer: str
    task: str
    level: int = 0
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def question(self) -> str:
        """The last user message."""
        return [c for r, c in self.messages if r == "user"][-1]

    @property
    def images(self) -> tuple[bytes, ...]:
        """The prompt's images (PNG bytes, `meta["images"]`), one per `<image>` placeholder."""
        return tuple(self.meta.get("images", ()))


@dataclass
class GenerationRequest:
    """What a rollout engine is asked to continue: prompt tokens plus any tokens
    already generated in earlier segments (partial rollouts, report §2.6.2)."""

    prompt_ids: list[int]
    prefix_ids: list[int] = field(default_factory=list)
    max_new_tokens: int | None = None  # this request's budget, if below SamplingParams.max_new_tokens
    id: str = ""  # names the trajectory across segments ("g<group>m<member>"), for engines and logs
    images: tuple[bytes, ...] = ()  # PNG bytes, one per image placeholder in prompt_ids (vision-language models)
    # Partial rollouts: if this segment ends at its budget, the engine may keep its KV cache,
    # so that the next call's request with the same id and context skips the prefill
    # (rollout.keep_kv; engines that cannot ignore it).
    keep_kv: bool = False
    # False: the repeat detector does not watch this request; its task's right answers
    # repeat an n-gram by design (`repeats_by_design`: ARC grids of equal rows).
    repeat_check: bool = True


@dataclass
class Segment:
    """What an engine returns for one request: new tokens and their log-probs under
    the sampling policy, and why generation ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: SegmentEnd

    @classmethod
    def not_started(cls) -> "Segment":
        """A request an output-token budget ran out before (rollout.iteration_tokens):
        nothing generated; it waits to be started by a later call."""
        return cls([], [], "length")

    @property
    def started(self) -> bool:
        return bool(self.token_ids) or self.finish_reason != "length"


@dataclass
class Trajectory:
    """One sampled response (chain of thought z and answer y) to one prompt.

    `group` identifies the K samples drawn for the same prompt in the same iteration:
    they share the mean-reward baseline and the length-penalty min/max.
    """

    prompt: Prompt
    group: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # log pi(token) at sampling time, one per response token
    finish_reason: Outcome
    text: str = ""
    correct: bool = False  # verifier outcome, r in {0, 1}
    reward: float = 0.0  # total reward used for the update (task + shaping terms)
    reward_terms: dict[str, float] = field(default_factory=dict)
    # Policy version (iteration) that sampled each response token; empty means all by
    # the current one. Partial rollouts (report §2.6.2) mix versions in one trajectory.
    versions: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.response_ids)
