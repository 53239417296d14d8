"""Small procedural programming problems, graded by running the program (report §2.3.5).

Each problem asks for a Python program that reads its input from stdin and prints one
line; its tests (five stdin/stdout cases) are in `Problem.meta["tests"]` and, as a
JSON test spec, in the answer, so the plain verifier `(response, answer)` can grade it.
Levels grow from one arithmetic operation on one number to loops and list processing.
The programs are short and follow a few templates, so a tiny model can learn to write
them from the warm-up traces.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from k15rl.tasks.base import Problem

Solver = Callable[[list[int], int], str]
# level -> (statement with {k}, input kind, program template with {k}, reference solver)
# input kinds: "n" one integer, "ab" two integers on one line, "list" integers on one line.
_FAMILIES: dict[int, list[tuple[str, str, str, Solver]]] = {
    1: [
        ("read an integer n and print n + {k}", "n", "n = int(input())\nprint(n + {k})", lambda x, k: str(x[0] + k)),
        ("read an integer n and print n - {k}", "n", "n = int(input())\nprint(n - {k})", lambda x, k: str(x[0] - k)),
        ("read an integer n and print n * {k}", "n", "n = int(input())\nprint(n * {k})", lambda x, k: str(x[0] * k)),
    ],
    2: [
        ("read two integers a b and print a + b + {k}", "ab", "a, b = map(int, input().split())\nprint(a + b + {k})",
         lambda x, k: str(x[0] + x[1] + k)),
        ("read two integers a b and print a * b - {k}", "ab", "a, b = map(int, input().split())\nprint(a * b - {k})",
         lambda x, k: str(x[0] * x[1] - k)),
        ("read two integers a b and print the larger plus {k}", "ab",
         "a, b = map(int, input().split())\nprint(max(a, b) + {k})", lambda x, k: str(max(x) + k)),
    ],
    3: [
        ("read integers on one line and print their sum plus {k}", "list",
         "xs = list(map(int, input().split()))\nprint(sum(xs) + {k})", lambda x, k: str(sum(x) + k)),
        ("read integers on one line and print the largest times {k}", "list",
         "xs = list(map(int, input().split()))\nprint(max(xs) * {k})", lambda x, k: str(max(x) * k)),
        ("read integers on one line and print how many there are plus {k}", "list",
         "xs = list(map(int, input().split()))\nprint(len(xs) + {k})", lambda x, k: str(len(x) + k)),
    ],
    4: [
        ("read integers on one line and print how many are greater than {k}", "list",
         "xs = list(map(int, input().split()))\nprint(len([x for x in xs if x > {k}]))",
         lambda x, k: str(sum(v > k for v in x))),
        ("read integers on one line and print the sum of those less than {k}", "list",
         "xs = list(map(int, input().split()))\nprint(sum(x for x in xs if x < {k}))",
         lambda x, k: str(sum(v for v in x if v < k))),
        ("read integers on one line and print each times {k}, space-separated", "list",
         "xs = list(map(int, input().split()))\nprint(' '.join(str(x * {k}) for x in xs))",
         lambda x, k: " ".join(str(v * k) for v in x)),
    ],
    5: [
        ("read an integer n and print the sum of i * {k} for i from 1 to n", "n",
         "n = int(input())\nt = 0\nfor i in range(1, n + 1):\n    t += i * {k}\nprint(t)",
         lambda x, k: str(sum(i * k for i in range(1, x[0] + 1)))),
        ("read an integer n and print the sum of i * i + {k} for i from 1 to n", "n",
         "n = int(input())\nt = 0\nfor i in range(1, n + 1):\n    t += i * i + {k}\nprint(t)",
         lambda x, k: str(sum(i * i + k for i in range(1, x[0] + 1)))),
    ],
    6: [
        ("read integers on one line and print them sorted, then {k}, space-separated", "list",
         "xs = sorted(map(int, input().split()))\nprint(' '.join(map(str, xs + [{k}])))",
         lambda x, k: " ".join(map(str, sorted(x) + [k]))),
        ("read integers on one line and print the running sums plus {k}, space-separated", "list",
         "xs = list(map(int, input().split()))\nt = {k}\nout = []\nfor x in xs:\n    t += x\n    out.append(t)\n"
         "print(' '.join(map(str, out)))",
         lambda x, k: " ".join(str(k + sum(x[: i + 1])) for i in range(len(x)))),
    ],
}
N_TESTS = 5


def _draw_input(rng: random.Random, kind: str) -> list[int]:
    if kind == "n":
        return [rng.randint(1, 30)]
    if kind == "ab":
        return [rng.randint(-20, 20), rng.randint(-20, 20)]
    return [rng.randint(-9, 20) for _ in range(rng.randint(1, 6))]


def _fmt(xs: list[int]) -> str:
    return " ".join(map(str, xs))


class CodeTask:
    """Write a stdin/stdout Python program; r = 1 iff it passes all five tests.

    >>> t = CodeTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> len(p.meta["tests"])
    5
    >>> t.verify(t.warmup_trace(p, random.Random(1)), p.answer)
    True
    >>> t.verify("answer:\\n```python\\nprint(0)\\n```", p.answer)
    False
    """

    name = "code"
    levels = tuple(_FAMILIES)

    def __init__(self, mistake_prob: float = 0.15):
        self.mistake_prob = mistake_prob

    def generate(self, rng: random.Random, level: int) -> Problem:
        family = rng.randrange(len(_FAMILIES[level]))
        statement, kind, _, solve = _FAMILIES[level][family]
        k = rng.randint(2, 9)
        tests: list[dict[str, str]] = []
        for _ in range(20 * N_TESTS):  # distinct inputs (level 1 draws from 30 numbers)
            xs = _draw_input(rng, kind)
            if _fmt(xs) not in (t["input"] for t in tests):
                tests.append({"input": _fmt(xs), "output": solve(xs, k)})
            if len(tests) == N_TESTS:
                break
        question = (f"Write a Python program: {statement.format(k=k)}. "
                    f"Example: input {tests[0]['input']!r} gives {tests[0]['output']!r}.")
        return Problem(
            question=question,
            answer=json.dumps({"tests": tests}),
            level=level,
            meta={"tests": tests, "family": family, "k": k},
        )

    def verify(self, response: str, answer: str) -> bool:
        """Run the response's last python block (the one after `answer:` in the warm-up
        format) against the tests: the same grading as the training reward (`code_tests`,
        rewards/compose.py), so a response scores the same wherever it is graded."""
        from k15rl.verifiers.code import verify_code  # the sandbox loads only when code is graded

        return verify_code(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Plan; sometimes a wrong first program whose check against the example fails
        and is redone (report §2.2); the program after `answer:`; its check."""
        statement, kind, template, solve = _FAMILIES[problem.level][problem.meta["family"]]
        k = problem.meta["k"]
        ex = problem.meta["tests"][0]
        out = [f"plan: {statement.format(k=k)}. write it, then check the example."]
        if rng.random() < self.mistake_prob:
            wrong_k = k + rng.choice([-1, 1])
            xs = [int(v) for v in ex["input"].split()]
            out.append(f"```python\n{template.format(k=wrong_k)}\n```")
            out.append(f"check: input {ex['input']} gives {solve(xs, wrong_k)}, expected {ex['output']}. "
                       f"wrong: used {wrong_k}, not {k}. redo.")
        out.append(f"answer:\n```python\n{template.format(k=k)}\n```")
        out.append(f"check: input {ex['input']} gives {ex['output']}. ok")
        return "\n".join(out)
