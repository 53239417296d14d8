"""The replay buffer of partial rollouts (report §2.6.2, RECIPE §5).

A trajectory that reaches the per-iteration token budget is cut: its prompt, tokens,
log-probs and the policy version of every token wait here, and a later iteration
continues it (prompt + saved tokens as the new context) until it stops or reaches the
global maximum length.

The K samples of one prompt form a group: they share the mean-reward baseline and the
length-reward min/max (§2.3.2, §2.3.3). A group is released for training only when all
its members have finished; members that finish early wait here for the others.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from k15rl.models.vision import image_key
from k15rl.types import Outcome, Prompt


@dataclass
class Member:
    """One trajectory of a group, finished (`outcome` set) or not (`outcome` None)."""

    prompt: Prompt
    group: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # policy version of each response token
    outcome: Outcome | None = None
    index: int = 0  # position in its group

    @property
    def finished(self) -> bool:
        return self.outcome is not None


class ReplayBuffer:
    """Groups in flight: every member of every group not yet trained on."""

    def __init__(self) -> None:
        self.groups: dict[int, list[Member]] = {}

    def add_group(self, members: list[Member]) -> None:
        group = members[0].group
        if group in self.groups:
            raise ValueError(f"group {group} is already in the replay buffer")
        self.groups[group] = members

    def unfinished(self) -> list[Member]:
        """Members still to be continued, oldest group first."""
        return [m for g in sorted(self.groups) for m in self.groups[g] if not m.finished]

    def pop_complete(self) -> list[list[Member]]:
        """Remove and return the groups whose members have all finished, oldest first."""
        done = [g for g in sorted(self.groups) if all(m.finished for m in self.groups[g])]
        return [self.groups.pop(g) for g in done]

    def num_unfinished(self) -> int:
        return sum(not m.finished for ms in self.groups.values() for m in ms)

    def num_waiting(self) -> int:
        """Finished members whose group is not complete yet."""
        return sum(m.finished for ms in self.groups.values() for m in ms)

    def __len__(self) -> int:
        return sum(len(ms) for ms in self.groups.values())

    # -- checkpointing: plain JSON-able data, so a resumed run continues its trajectories.
    # Prompts' images are kept once each (base64 under their content hash; the K members of
    # a group share one), the members refer to them by that hash.
    def state_dict(self) -> dict[str, Any]:
        images: dict[str, str] = {}
        groups = [[_member_to_dict(m, images) for m in ms] for _, ms in sorted(self.groups.items())]
        return {"groups": groups, "images": images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = {}
        images = {k: base64.b64decode(v) for k, v in state.get("images", {}).items()}
        for ms in state["groups"]:
            self.add_group([_member_from_dict(d, images) for d in ms])


def _member_to_dict(m: Member, images: dict[str, str]) -> dict[str, Any]:
    pngs = m.prompt.images
    if pngs:  # asdict would deep-copy the bytes; refer to them instead
        m = dataclasses.replace(m, prompt=dataclasses.replace(m.prompt, meta={**m.prompt.meta, "images": ()}))
    d = dataclasses.asdict(m)
    d["prompt"]["messages"] = [list(x) for x in m.prompt.messages]
    if pngs:
        d["prompt"]["meta"]["images"] = [image_key(png) for png in pngs]
        images.update((image_key(png), base64.b64encode(png).decode()) for png in pngs)
    return d


def _member_from_dict(d: dict[str, Any], images: dict[str, bytes]) -> Member:
    p = dict(d["prompt"])
    p["messages"] = tuple(tuple(x) for x in p["messages"])
    if p["meta"].get("images"):
        p["meta"] = {**p["meta"], "images": tuple(images[k] for k in p["meta"]["images"])}
    return Member(**{**d, "prompt": Prompt(**p)})
