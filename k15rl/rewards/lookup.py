"""Which verifier a name stands for: the one place that decides it (report §2.3.5).

A name is a built-in task's (`sort`, `code`, ...: the task's own `verify`) or one of
`VERIFIERS`, for answers not tied to a built-in task (`math`, `integer`, code tests).
Data rows name theirs (`data.verifier`, a row's `verifier` field); `reward.sources`
entries and prompts without a source fall back to it.
"""

from __future__ import annotations

from k15rl.tasks import TASKS, get_task
from k15rl.verifiers import Verifier, verify_integer, verify_math
from k15rl.verifiers.code import verify_code

# Verifiers for answers that are not tied to a built-in task.
VERIFIERS: dict[str, Verifier] = {"math": verify_math, "integer": verify_integer,
                                   "code_tests": verify_code, "humaneval": verify_code}


def verifier_names() -> frozenset[str]:
    """Every name `verifier_for` accepts.

    >>> {"math", "sort", "code_tests"} <= verifier_names()
    True
    """
    return frozenset(VERIFIERS) | frozenset(TASKS)


def verifier_for(name: str) -> Verifier:
    """The verifier of a name: a built-in task's own, or one of VERIFIERS.

    >>> verifier_for("integer")("answer: 12", "12")
    True
    """
    if name in TASKS:
        return get_task(name).verify
    if name in VERIFIERS:
        return VERIFIERS[name]
    raise ValueError(f"no verifier for task {name!r}")
