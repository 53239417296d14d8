"""Prompt samplers behind one protocol (report §2.3.4).

A sampler picks the prompts of each iteration and may learn from their outcomes
(`update`); its state goes into checkpoints (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import random
from typing import Any, Protocol, Sequence

from k15rl.types import Prompt, Trajectory


class Sampler(Protocol):
    def sample(self, n: int) -> list[Prompt]: ...

    def update(self, trajectories: Sequence[Trajectory]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UniformSampler:
    """Prompts drawn uniformly without replacement, reshuffled each pass (epoch).

    >>> from k15rl.types import Prompt
    >>> ps = [Prompt(str(i), (("user", str(i)),), str(i), "arith") for i in range(5)]
    >>> s = UniformSampler(ps, seed=0)
    >>> len({p.id for p in s.sample(5)})
    5
    """

    def __init__(self, prompts: Sequence[Prompt], seed: int = 0):
        if not prompts:
            raise ValueError("the sampler got no prompts")
        self.prompts = list(prompts)
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.pos = 0

    def sample(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.pos >= len(self.order):
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
                self.pos = 0
            out.append(self.prompts[self.order[self.pos]])
            self.pos += 1
        return out

    def update(self, trajectories: Sequence[Trajectory]) -> None:
        """Uniform sampling ignores outcomes."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng_state = state["rng"]
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.order, self.pos = list(state["order"]), int(state["pos"])


SAMPLERS = {"uniform": UniformSampler}


def make_sampler(name: str, prompts: Sequence[Prompt], seed: int) -> Sampler:
    return SAMPLERS[name](prompts, seed=seed)
