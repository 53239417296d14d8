"""Multi-step addition with carries: several multi-digit numbers, summed column by column.

Each step is easy; the difficulty is carrying many steps without a slip, so checking the
intermediate results pays off. Levels grow the number of operands and digits.
"""

from __future__ import annotations

import random

from k15rl.tasks.base import Problem
from k15rl.verifiers import verify_integer

# level -> (number of operands, digits per operand)
LONG_ADD_LEVELS: dict[int, tuple[int, int]] = {
    1: (2, 2),
    2: (2, 3),
    3: (3, 3),
    4: (3, 4),
    5: (4, 4),
    6: (4, 5),
}


def _column_lines(a: int, b: int) -> tuple[list[tuple[str, int, int]], int]:
    """Column-wise addition of a + b, least significant digit first.

    Returns ([(line, written_digit, carry_out)], sum). Each line reads like
    ``8+9+1=18``: digit of a, digit of b, incoming carry, column sum (its tens digit is
    the outgoing carry).
    """
    da, db = str(a)[::-1], str(b)[::-1]
    carry = 0
    lines = []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lines.append((f"{x}+{y}+{carry}={s}", s % 10, s // 10))
        carry = s // 10
    if carry:
        lines.append((f"carry {carry}", carry, 0))
    return lines, a + b


class LongAddTask:
    """Sum of several multi-digit numbers; the answer is an integer.

    >>> t = LongAddTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> t.verify("answer: " + p.answer, p.answer)
    True
    >>> t.verify(t.warmup_trace(p, random.Random(1)), p.answer)
    True
    """

    name = "long_add"
    levels = tuple(LONG_ADD_LEVELS)

    def __init__(self, mistake_prob: float = 0.06):
        self.mistake_prob = mistake_prob

    def generate(self, rng: random.Random, level: int) -> Problem:
        n_ops, digits = LONG_ADD_LEVELS[level]
        nums = [rng.randint(10 ** (digits - 1), 10**digits - 1) for _ in range(n_ops)]
        return Problem(
            question=f"Compute {'+'.join(map(str, nums))}.",
            answer=str(sum(nums)),
            level=level,
            meta={"operands": nums},
        )

    def verify(self, response: str, answer: str) -> bool:
        return verify_integer(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """A long chain of thought: plan, add column by column, sometimes slip on a
        column and notice it ("wait"), redo it, check the last digit, answer."""
        nums: list[int] = problem.meta["operands"]
        out = [f"plan: add {len(nums)} numbers, two at a time, by column."]
        total = nums[0]
        for b in nums[1:]:
            a = total
            out.append(f"{a}+{b}:")
            lines, total = _column_lines(a, b)
            for line, _, _ in lines:
                if line[0].isdigit() and rng.random() < self.mistake_prob:
                    # A slip in the column sum, noticed and corrected (report §2.2:
                    # "noticing a mistake and backtracking").
                    lhs, rhs = line.split("=")
                    s = int(rhs.split()[0])
                    wrong = s + rng.choice([-1, 1]) if s > 0 else s + 1
                    out.append(f"{lhs}={wrong}")
                    out.append(f"wait, {lhs} is {s}, not {wrong}. redo.")
                out.append(line)
            out.append(f"so {total}")
        units = sum(n % 10 for n in nums)
        out.append(f"check: last digits sum to {units}, {total} ends in {total % 10}. ok")
        out.append(f"answer: {total}")
        return "\n".join(out)
