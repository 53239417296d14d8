"""Verifiers: r(x, y, y*) in {0, 1} (report §2.3.1, §2.3.5), the bottom layer that tasks
and rewards both build on. A verifier is a plain function `(response, answer) -> bool`.

    answers.py        the fixed final-answer format, integers, `math-verify` for math
    code.py           code: the response's program against the tests of a JSON spec
    sandbox.py        where programs run (namespaces, rlimits, an unprivileged runner)
    sandbox_pool.py   grading many programs in parallel

This package imports nothing else of k15rl except `k15rl.types`; the answer verifiers
need only the standard library (`math-verify` is imported when first used), and the
code verifier and its sandbox load only when imported (`k15rl.verifiers.code`). Which
verifier a name stands for (a task name or `math`, `integer`, ...) is decided in one
place above the tasks: `k15rl.rewards.lookup.verifier_for`.
"""

from typing import Callable

from k15rl.verifiers.answers import extract_answer, extract_boxed, verify_integer, verify_math

Verifier = Callable[[str, str], bool]

__all__ = ["Verifier", "extract_answer", "extract_boxed", "verify_integer", "verify_math"]
