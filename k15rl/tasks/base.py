"""The task protocol and split construction shared by all built-in task families."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from k15rl.types import Prompt

SPLITS = ("train", "test")
# One question in TEST_BUCKETS out of HASH_BUCKETS belongs to the test split. The split
# of a question is a function of its text alone, so train and test are disjoint by
# construction, whatever sizes and seeds are asked for.
HASH_BUCKETS = 10
TEST_BUCKETS = 1


@dataclass(frozen=True)
class Problem:
    """One generated problem: the question text, its ground-truth answer, extra data."""

    question: str
    answer: str
    level: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class Task(Protocol):
    """A procedural task family with verifiable answers and difficulty levels.

    `generate` draws one problem of a level; `verify` is the rule-based reward
    (report §2.3.5) on a model response; `warmup_trace` writes a long chain of thought
    for the problem (report §2.2: planning, checking, noticing a mistake, backtracking).
    """

    name: str
    levels: tuple[int, ...]

    def generate(self, rng: random.Random, level: int) -> Problem: ...

    def verify(self, response: str, answer: str) -> bool: ...

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str: ...


def split_of(question: str) -> str:
    """Which split a question belongs to (stable across runs, Python versions, seeds).

    >>> split_of("Compute 12+34.") in SPLITS
    True
    """
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return "test" if h % HASH_BUCKETS < TEST_BUCKETS else "train"


def problem_key(item: Prompt | Problem) -> str:
    """What tells a built-in task's problems apart: the scene of a visual problem
    (`meta["split_key"]`), else the question."""
    return item.meta.get("split_key", item.question)


def split_group(item: Prompt | Problem) -> str:
    """What decides a problem's split: `meta["split_group"]` where distinct problems share
    what a held-out problem must not have been trained on (`vis_pattern`: one repeating run
    with the "?" in different cells), else its `problem_key`."""
    return item.meta.get("split_group", problem_key(item))


class TooFewProblems(ValueError):
    """A level of a split has fewer distinct problems than asked; `excluded` of the others
    were left out because their keys were in `make_prompts`' `exclude`."""

    def __init__(self, message: str, excluded: int):
        super().__init__(message)
        self.excluded = excluded


def make_prompts(
    task: Task, split: str, n_per_level: int, levels: tuple[int, ...], seed: int,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[Prompt]:
    """`n_per_level` distinct problems of each level from one split, deterministic by seed,
    none of whose keys (`problem_key`) is in `exclude`.

    A problem's split is that of its `split_group`: `meta["split_group"]`, else
    `meta["split_key"]` (visual tasks), else its question. A problem with
    `meta["image"]` (PNG bytes) becomes a prompt with an `<image>` placeholder and
    `meta["images"]`.

    Raises TooFewProblems (a ValueError) if a level has fewer distinct problems in the
    split than asked.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    prompts: list[Prompt] = []
    for level in levels:
        if level not in task.levels:
            raise ValueError(f"task {task.name!r} has levels {task.levels}, got level {level}")
        rng = random.Random(f"{task.name}/{split}/{level}/{seed}")
        seen: set[str] = set()
        excluded: set[str] = set()
        attempts = stalled = 0  # stalled: draws since the last new problem
        while len(seen) < n_per_level:
            attempts += 1
            stalled += 1
            # gives up when a level is exhausted: after 50x the draws asked for, or, sooner for a
            # huge request, after 50x the draws that found a new one (drawing the last of N
            # distinct problems takes about N draws on average)
            if attempts > 50 * n_per_level + 1000 or stalled > 50 * len(seen) + 1000:
                left_out = f"; {len(excluded)} more were excluded" if excluded else ""
                raise TooFewProblems(
                    f"task {task.name!r} level {level}: could not draw {n_per_level} distinct "
                    f"{split} problems (got {len(seen)}{left_out})", len(excluded)
                )
            p = task.generate(rng, level)
            key = problem_key(p)  # visual tasks: the scene, not the question
            if key in seen or split_of(split_group(p)) != split:
                continue
            if key in exclude:
                excluded.add(key)
                continue
            seen.add(key)
            stalled = 0
            meta = dict(p.meta)
            question = p.question
            if "image" in meta:  # one image, one placeholder before the question (verl's layout)
                meta["images"] = (meta.pop("image"),)
                question = "<image>" + question
            prompts.append(
                Prompt(
                    id=f"{task.name}-{split}-L{level}-{len(seen) - 1}",
                    messages=(("user", question),),
                    answer=p.answer,
                    task=task.name,
                    level=level,
                    meta=meta,
                )
            )
    return prompts
