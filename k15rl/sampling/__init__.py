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


class PrioritizedSampler:
    """Prioritized sampling (report §2.3.4): prompt p is drawn with probability
    proportional to max(1 - s_p, min_weight), without replacement within an iteration.

    s_p is the prompt's success rate over all its rollouts so far, smoothed by a prior:
    s_p = (successes + prior_p * prior_weight) / (attempts + prior_weight). The prior
    prior_p of a prompt is its estimated pass rate (`meta["pass_rate"]`, written by
    `k15rl difficulty`) where it has one, else `prior`; an unseen prompt has s_p = prior_p.
    `min_weight` keeps solved prompts (s_p = 1) from being starved forever, since a
    policy can forget.

    >>> from k15rl.types import Prompt
    >>> ps = [Prompt(str(i), (("user", str(i)),), "", "sort") for i in range(3)]
    >>> s = PrioritizedSampler(ps, prior=0.5, prior_weight=1.0, min_weight=0.05)
    >>> s.stats["0"] = [4, 4]  # 4 successes in 4 attempts -> s = 4.5/5 = 0.9
    >>> [round(w, 3) for w in s.weights()]
    [0.1, 0.5, 0.5]
    """

    def __init__(self, prompts: Sequence[Prompt], seed: int = 0, prior: float = 0.5, prior_weight: float = 1.0,
                 min_weight: float = 0.05):
        if not prompts:
            raise ValueError("the sampler got no prompts")
        self.prompts = list(prompts)
        self.prior, self.prior_weight, self.min_weight = prior, prior_weight, min_weight
        self.priors = {p.id: float(p.meta.get("pass_rate", prior)) for p in self.prompts}
        self.stats: dict[str, list[float]] = {}  # prompt id -> [successes, attempts]
        self.rng = random.Random(seed)

    def success_rate(self, prompt_id: str) -> float:
        succ, n = self.stats.get(prompt_id, (0.0, 0.0))
        prior = self.priors.get(prompt_id, self.prior)
        return (succ + prior * self.prior_weight) / (n + self.prior_weight)

    def weights(self) -> list[float]:
        return [max(1.0 - self.success_rate(p.id), self.min_weight) for p in self.prompts]

    def sample(self, n: int) -> list[Prompt]:
        w = self.weights()
        # Efraimidis-Spirakis: the n largest u^(1/w) are a weighted sample without replacement.
        keys = [self.rng.random() ** (1.0 / wi) for wi in w]
        order = sorted(range(len(w)), key=keys.__getitem__, reverse=True)
        chosen = order[: min(n, len(order))]
        while len(chosen) < n:  # fewer prompts than asked: draw again
            chosen.append(self.rng.choices(range(len(w)), weights=w)[0])
        return [self.prompts[i] for i in chosen]

    def update(self, trajectories: Sequence[Trajectory]) -> None:
        for t in trajectories:
            st = self.stats.setdefault(t.prompt.id, [0.0, 0.0])
            st[0] += float(t.correct)
            st[1] += 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "stats": self.stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r = state["rng"]
        self.rng.setstate((r[0], tuple(r[1]), r[2]))
        self.stats = {k: list(v) for k, v in state["stats"].items()}


DIFFICULTIES = ("level", "label", "pass_rate")


def hardness(p: Prompt, difficulty: str) -> float:
    """How hard a prompt is, higher = harder: its built-in `level`, its dataset
    difficulty label (`meta["difficulty"]`), or 1 - its estimated pass rate
    (`meta["pass_rate"]`, report §2.3.4). Raises ValueError if the prompt has none.

    >>> from k15rl.types import Prompt
    >>> round(hardness(Prompt("a", (("user", "q"),), "", "math", level=3, meta={"pass_rate": 0.8}), "pass_rate"), 6)
    0.2
    """
    if difficulty == "level":
        return float(p.level)
    key = {"label": "difficulty", "pass_rate": "pass_rate"}.get(difficulty)
    if key is None:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if key not in p.meta:
        hint = "run `k15rl difficulty` first" if key == "pass_rate" else "map data.columns.difficulty"
        raise ValueError(f"prompt {p.id} has no {key} for difficulty={difficulty} ({hint})")
    value = float(p.meta[key])
    return 1.0 - value if difficulty == "pass_rate" else value


class CurriculumSampler:
    """Curriculum sampling (report §2.3.4): easy problems first, then harder ones; uniform
    among the prompts allowed at the current iteration.

    Difficulty is `difficulty`: "level" (the built-in tasks' levels), "label" (a
    dataset's difficulty column) or "pass_rate" (estimated by `k15rl difficulty`; a lower
    pass rate is harder).

    schedule "warmup_then_hard" (the report's ablation): all prompts for
    `warmup_iterations`, then only hard ones: difficulty >= `hard_min_level` (level,
    label) or pass rate <= `hard_max_pass_rate` (pass_rate).
    schedule "gradual": the hardest allowed difficulty rises linearly from the easiest
    to the hardest over `warmup_iterations`, then all prompts.

    >>> from k15rl.types import Prompt
    >>> ps = [Prompt(str(i), (("user", str(i)),), "", "sort", level=1 + i % 4) for i in range(40)]
    >>> s = CurriculumSampler(ps, schedule="warmup_then_hard", warmup_iterations=1, hard_min_level=3)
    >>> sorted({p.level for p in s.sample(40)}), sorted({p.level for p in s.sample(40)})
    ([1, 2, 3, 4], [3, 4])
    """

    def __init__(self, prompts: Sequence[Prompt], seed: int = 0, schedule: str = "warmup_then_hard",
                 warmup_iterations: int = 10, hard_min_level: int = 4, difficulty: str = "level",
                 hard_max_pass_rate: float = 0.5):
        if schedule not in ("warmup_then_hard", "gradual"):
            raise ValueError(f"curriculum schedule must be 'warmup_then_hard' or 'gradual', got {schedule!r}")
        if not prompts:
            raise ValueError("the sampler got no prompts")
        self.prompts = list(prompts)
        self.hardness = [hardness(p, difficulty) for p in self.prompts]
        self.levels = sorted(set(self.hardness))  # distinct difficulties, easiest first
        self.schedule, self.warmup = schedule, warmup_iterations
        # Hard = hardness >= hard_min, in the units of `hardness`.
        self.hard_min = 1.0 - hard_max_pass_rate if difficulty == "pass_rate" else float(hard_min_level)
        if schedule == "warmup_then_hard" and not any(h >= self.hard_min - 1e-12 for h in self.levels):
            what = (f"pass rate <= hard_max_pass_rate={hard_max_pass_rate}" if difficulty == "pass_rate"
                    else f"{difficulty} >= hard_min_level={hard_min_level}")
            raise ValueError(f"no prompt has {what}")
        self.iteration = 0
        self.rng = random.Random(seed)

    def allowed_levels(self, iteration: int) -> list[float]:
        """The difficulties (in `hardness` units) sampled at `iteration`."""
        if self.schedule == "warmup_then_hard":
            if iteration < self.warmup:
                return self.levels
            return [lv for lv in self.levels if lv >= self.hard_min - 1e-12]
        if iteration >= self.warmup:  # gradual, after its ramp
            return self.levels
        lo, hi = self.levels[0], self.levels[-1]
        top = lo + (hi - lo) * (iteration + 1) / self.warmup
        return [lv for lv in self.levels if lv <= top + 1e-12]

    def sample(self, n: int) -> list[Prompt]:
        allowed = set(self.allowed_levels(self.iteration))
        pool = [p for p, h in zip(self.prompts, self.hardness) if h in allowed]
        self.iteration += 1
        return self.rng.sample(pool, n) if n <= len(pool) else [self.rng.choice(pool) for _ in range(n)]

    def update(self, trajectories: Sequence[Trajectory]) -> None:
        """The schedule depends on the iteration only."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r = state["rng"]
        self.rng.setstate((r[0], tuple(r[1]), r[2]))
        self.iteration = int(state["iteration"])


SAMPLERS = {"uniform": UniformSampler, "prioritized": PrioritizedSampler, "curriculum": CurriculumSampler}


def sampler_options(name: str) -> set[str]:
    """The keyword settings the sampler called `name` takes."""
    import inspect

    return set(inspect.signature(SAMPLERS[name]).parameters) - {"prompts", "seed"}


def make_sampler(name: str, prompts: Sequence[Prompt], seed: int, **options: Any) -> Sampler:
    """The sampler called `name`; `options` are its keyword settings (those it takes:
    `sampler_options`; the caller says which others it was given)."""
    taken = sampler_options(name)
    return SAMPLERS[name](prompts, seed=seed, **{k: v for k, v in options.items() if k in taken})
