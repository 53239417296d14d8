"""Countdown: combine all given numbers once each with + - * to reach a target.

A search problem: a trace tries orders and operators, checks each result against the
target, backs off from dead ends and finally verifies that every number was used once.
"""

from __future__ import annotations

import ast
import itertools
import random
import re
from collections import Counter

from k15rl.tasks.base import Problem
from k15rl.verifiers import extract_answer

# level -> (how many numbers, largest number)
COUNTDOWN_LEVELS: dict[int, tuple[int, int]] = {
    1: (3, 9),
    2: (3, 20),
    3: (4, 9),
    4: (4, 20),
    5: (5, 20),
}
OPS = "+-*"
MAX_TARGET = 999


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _chain(nums: list[int], ops: list[str]) -> tuple[str, list[str], int]:
    """Evaluate ((n0 op n1) op n2)...: returns (expression, step lines, value)."""
    expr, value, steps = str(nums[0]), nums[0], []
    for op, n in zip(ops, nums[1:]):
        new = _apply(value, op, n)
        steps.append(f"{value}{op}{n}={new}")
        expr, value = f"({expr}{op}{n})", new
    return expr[1:-1] if len(nums) > 1 else expr, steps, value


def _safe_eval(node: ast.AST) -> tuple[int, list[int]]:
    """Value and leaf numbers of an expression made of ints, + - * and parentheses."""
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value, [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
        (a, la), (b, lb) = _safe_eval(node.left), _safe_eval(node.right)
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(node.op)]
        return _apply(a, op, b), la + lb
    raise ValueError("not an expression of integers with + - *")


def check_countdown(expression: str, numbers: list[int], target: int) -> bool:
    """True iff `expression` uses each of `numbers` exactly once and equals `target`.

    >>> check_countdown("(7*3+5)-2", [2, 3, 5, 7], 24)
    True
    >>> check_countdown("7*3+5", [2, 3, 5, 7], 26)
    False
    >>> check_countdown("__import__('os')", [1], 1)
    False
    """
    if len(expression) > 200 or not re.fullmatch(r"[\d\s+\-*()]+", expression):
        return False
    try:
        value, leaves = _safe_eval(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, RecursionError):
        return False
    return value == target and Counter(leaves) == Counter(numbers)


class CountdownTask:
    """Reach the target with all the numbers; the answer is an expression.

    >>> t = CountdownTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "countdown"
    levels = tuple(COUNTDOWN_LEVELS)

    def __init__(self, max_failed_tries: int = 3):
        self.max_failed_tries = max_failed_tries

    def generate(self, rng: random.Random, level: int) -> Problem:
        count, largest = COUNTDOWN_LEVELS[level]
        while True:
            nums = [rng.randint(1, largest) for _ in range(count)]
            ops = [rng.choice(OPS) for _ in range(count - 1)]
            expr, _, target = _chain(nums, ops)
            if 1 <= target <= MAX_TARGET:
                break
        shown = sorted(nums)
        # The ground truth holds the numbers and the target; any valid expression scores.
        return Problem(
            question=f"Use {' '.join(map(str, shown))} once each with + - * to make {target}.",
            answer=f"{' '.join(map(str, shown))}={target}",
            level=level,
            meta={"numbers": shown, "target": target, "solution": expr},
        )

    def verify(self, response: str, answer: str) -> bool:
        nums_s, target_s = answer.split("=")
        got = extract_answer(response)
        if got is None:
            return False
        got = got.split("=")[0]  # tolerate "expr = target"
        return check_countdown(got, [int(x) for x in nums_s.split()], int(target_s))

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Tries a few orders and operators that miss (noticing each miss and backing
        off), then a chain that reaches the target, checks it, answers."""
        nums, target = problem.meta["numbers"], problem.meta["target"]
        out = [f"plan: combine {' '.join(map(str, nums))} in some order to reach {target}. try, check, back off."]
        solutions = []
        for perm in itertools.permutations(nums):
            for ops in itertools.product(OPS, repeat=len(nums) - 1):
                expr, steps, value = _chain(list(perm), list(ops))
                (solutions if value == target else []).append((expr, steps))
        n_fail = rng.randint(0, self.max_failed_tries)
        for _ in range(n_fail):
            perm = rng.sample(nums, len(nums))
            ops = [rng.choice(OPS) for _ in range(len(nums) - 1)]
            expr, steps, value = _chain(perm, ops)
            if value == target:
                continue
            cmp = "too big" if value > target else "too small"
            out.append(f"try {', '.join(steps)}: {value} is {cmp}, back off.")
        expr, steps = rng.choice(solutions)
        out.append(f"try {', '.join(steps)}: {target}. yes")
        out.append(f"check: {expr} uses {' '.join(map(str, nums))} once each. ok")
        out.append(f"answer: {expr}")
        return "\n".join(out)
