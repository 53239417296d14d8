"""Chain arithmetic: add and subtract a run of small numbers, one step at a time.

Each step is easy; the difficulty is many steps without a slip (carries and borrows
across tens), so checking intermediate results pays off. Levels grow the number of steps
(levels 4-6 add subtraction and terms up to 19).
"""

from __future__ import annotations

import random

from k15rl.tasks.base import Problem
from k15rl.verifiers import verify_integer

# level -> (number of terms, largest term, subtraction allowed)
ARITH_LEVELS: dict[int, tuple[int, int, bool]] = {
    1: (3, 9, False),
    2: (4, 9, False),
    3: (5, 9, False),
    4: (6, 19, True),
    5: (8, 19, True),
    6: (10, 19, True),
}


class ArithTask:
    """Evaluate a left-to-right chain like ``7+5-3+9``; the answer is an integer.

    >>> t = ArithTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> t.verify("answer: " + p.answer, p.answer)
    True
    >>> t.verify(t.warmup_trace(p, random.Random(1)), p.answer)
    True
    """

    name = "arith"
    levels = tuple(ARITH_LEVELS)

    def __init__(self, mistake_prob: float = 0.08):
        self.mistake_prob = mistake_prob

    def generate(self, rng: random.Random, level: int) -> Problem:
        n_terms, largest, minus = ARITH_LEVELS[level]
        terms = [rng.randint(1, largest)]
        ops = []
        for _ in range(n_terms - 1):
            ops.append(rng.choice("+-") if minus else "+")
            terms.append(rng.randint(1, largest))
        expr = str(terms[0]) + "".join(f"{o}{t}" for o, t in zip(ops, terms[1:]))
        value = terms[0]
        for o, t in zip(ops, terms[1:]):
            value = value + t if o == "+" else value - t
        return Problem(
            question=f"Compute {expr}.",
            answer=str(value),
            level=level,
            meta={"terms": terms, "ops": ops},
        )

    def verify(self, response: str, answer: str) -> bool:
        return verify_integer(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """A long chain of thought: plan; then per step, combine the first two terms
        (``3+2=5``) and rewrite what is left (``5+5+2``); sometimes a slip that is noticed
        ("wait") and redone (report §2.2); a check of the step count; the answer."""
        terms, ops = problem.meta["terms"], problem.meta["ops"]
        out = [f"plan: {len(terms)} numbers. combine the first two, rewrite, repeat."]
        value = terms[0]
        for i, (o, t) in enumerate(zip(ops, terms[1:])):
            new = value + t if o == "+" else value - t
            tail = "".join(f"{o2}{t2}" for o2, t2 in zip(ops[i + 1 :], terms[i + 2 :]))
            if rng.random() < self.mistake_prob:
                wrong = new + rng.choice([-1, 1, 10, -10])
                out.append(f"{value}{o}{t}={wrong}")
                out.append(f"wait, {value}{o}{t} is {new}, not {wrong}.")
            out.append(f"{value}{o}{t}={new}: {new}{tail}")
            value = new
        out.append(f"check: {len(terms) - 1} steps. ok")
        out.append(f"answer: {value}")
        return "\n".join(out)
