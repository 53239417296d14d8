"""Built-in procedural tasks with verifiable answers and difficulty levels."""

from __future__ import annotations

from typing import Callable

from k15rl.tasks.arc import VisArcTask
from k15rl.tasks.arith import ArithTask
from k15rl.tasks.base import Problem, Task, TooFewProblems, make_prompts, problem_key, split_group, split_of
from k15rl.tasks.code import CodeTask
from k15rl.tasks.countdown import CountdownTask
from k15rl.tasks.hops import HopsTask
from k15rl.tasks.long_add import LongAddTask
from k15rl.tasks.rg import RG_TASKS, ReasoningGymTask
from k15rl.tasks.sort import SortTask
from k15rl.tasks.subset_sum import SubsetSumTask
from k15rl.tasks.visual import (VISUAL_TASKS, VisBarsTask, VisCountTask, VisPatternTask, VisSortTask, VisTextTask,
                                VisWhereTask)

TASKS: dict[str, Callable[[], Task]] = {"arith": ArithTask, "code": CodeTask, "countdown": CountdownTask, "hops": HopsTask,
                                         "long_add": LongAddTask, "sort": SortTask, "subset_sum": SubsetSumTask, **RG_TASKS,
                                         **VISUAL_TASKS, "vis_arc": VisArcTask}


def repeats_by_design(name: str) -> bool:
    """Whether task `name`'s right answers repeat an n-gram by design (a grid of equal rows),
    so that the repeat detector must not stop its samples as loops (report §2.6.2)."""
    return bool(getattr(TASKS.get(name), "repeats_by_design", False))


def get_task(name: str) -> Task:
    """The built-in task family called `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


__all__ = ["TASKS", "ArithTask", "VisArcTask", "CodeTask", "CountdownTask", "HopsTask", "LongAddTask", "ReasoningGymTask", "SortTask", "SubsetSumTask", "VISUAL_TASKS", "VisBarsTask", "VisCountTask", "VisPatternTask", "VisSortTask", "VisTextTask", "VisWhereTask", "Problem", "Task", "TooFewProblems", "get_task", "make_prompts", "problem_key", "repeats_by_design", "split_group", "split_of"]
