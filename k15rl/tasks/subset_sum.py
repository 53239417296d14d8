"""Subset sum by depth-first search: the built-in long-CoT workload.

Pick some of the given numbers (each at most once) that add up to a target; any such
subset scores (a rule checks it, no model). The warm-up trace (report §2.2, long-CoT
warm-up: planning, checking, backtracking) is a real depth-first search, largest number
first: one line per number tried, one line per step back out of a dead end. Its length
grows with the part of the search tree explored, so it is long and heavy-tailed, and the
levels (more and larger numbers) stretch the tail.

Controllable overthinking: after the answer is found and checked, a trace may search on
for another way and re-check the same answer ("check again: ...") without changing it,
so a shorter correct response always exists: the redundancy the length penalty (report
§2.3.3) and long2short (§2.4) are meant to remove. `SubsetSumTask(overthink_prob,
max_research_frac, max_extra_checks)` sets how much; `warmup_trace(..., concise=True)`
is the same search and answer without it, for comparisons.

Lengths in tokens of a tokenizer built like the built-in one (digits one token each),
600 default traces over the 6 levels (tests/test_long_cot_task.py): median about 263,
99th percentile about 1,660 (6.3x the median), longest about 1,940 (1,982 with its
prompt: fits 2,048 positions); the concise traces are about 35% fewer tokens in all.

Line formats (few distinct words)::

    plan: make 20 from the list, largest first, back up on a dead end.
    12: 0+12=12 < 20, go on
    12+9: 12+9=21 > 20, over
    12+7: 12+7=19 < 20, go on
    12+7+5: 19+5=24 > 20, over
    12+7+3: 19+3=22 > 20, over
    12+7: 19-7=12, back
    12+5: 12+5=17 < 20, go on
    12+5+3: 17+3=20 = 20, found
    check: 12+5+3=20, each from the list once. ok
    check again: search on for another way.        (overthinking from here ...
    12+5: 17-5=12, back
    12+3: 12+3=15 < 20, go on
    check again: keep 12+5+3. ok
    check again: 20-12=8, 8-5=3, 3-3=0. ok         ... to here)
    answer: 12+5+3
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Iterator

from k15rl.tasks.base import Problem
from k15rl.verifiers import extract_answer

# level -> (how many numbers, largest number)
SUBSET_SUM_LEVELS: dict[int, tuple[int, int]] = {
    1: (3, 12),
    2: (4, 12),
    3: (5, 16),
    4: (6, 20),
    5: (7, 24),
    6: (7, 30),
}
# A problem whose search takes more lines than this is drawn again, so the longest
# trace (with its checks and the prompt) fits a 2,048-position model.
MAX_SEARCH_LINES = 60
# Searching on after the answer (overthinking) stops where search and continued search
# together reach this many lines, for the same reason.
MAX_TRACE_LINES = 61
_SUM = re.compile(r"^\d+(?:\+\d+)*$")


def _dfs(numbers: list[int], target: int) -> Iterator[tuple[str, list[int] | None]]:
    """Every line of a depth-first search over the whole tree (largest number first, each
    at most once), with the subset on each "found" line and None on the others. After a
    "found" the search goes on as if that number had missed (continued search).

    Each line starts with the path it is at (the numbers chosen, the one tried last), so
    that the next line follows from this one and the list alone: a model need not find,
    hundreds of tokens back, the line a step back returns to."""
    nums = sorted(numbers, reverse=True)
    chosen: list[int] = []

    def rec(start: int, total: int) -> Iterator[tuple[str, list[int] | None]]:
        for j in range(start, len(nums)):
            n, new = nums[j], total + nums[j]
            path = "+".join(map(str, chosen + [n]))
            if new == target:
                yield f"{path}: {total}+{n}={new} = {target}, found", chosen + [n]
            elif new > target:
                yield f"{path}: {total}+{n}={new} > {target}, over", None
            else:
                yield f"{path}: {total}+{n}={new} < {target}, go on", None
                chosen.append(n)
                yield from rec(j + 1, new)
                chosen.pop()
                yield f"{path}: {new}-{n}={total}, back", None

    return rec(0, 0)


def search_lines(numbers: list[int], target: int, max_lines: int | None = None) -> tuple[list[str], list[int]] | None:
    """The depth-first search up to the first subset summing to `target`: its lines and
    that subset (([...], []) if there is none), or None if it takes more than `max_lines`.

    >>> search_lines([9, 5, 3], 8)
    (['9: 0+9=9 > 8, over', '5: 0+5=5 < 8, go on', '5+3: 5+3=8 = 8, found'], [5, 3])
    >>> search_lines([9, 5, 3], 8, max_lines=2) is None
    True
    """
    lines: list[str] = []
    for line, subset in _dfs(numbers, target):
        lines.append(line)
        if max_lines is not None and len(lines) > max_lines:
            return None
        if subset is not None:
            return lines, subset
    return lines, []


def continued_search(numbers: list[int], target: int, skip: int, max_lines: int) -> list[str]:
    """Up to `max_lines` lines of the search after its first `skip` lines, ending early
    at the next subset found: searching on after the answer is found (overthinking).

    >>> continued_search([9, 5, 4, 3], 9, 1, 5)  # 9 is found at once; the search goes on
    ['5: 0+5=5 < 9, go on', '5+4: 5+4=9 = 9, found']
    """
    out: list[str] = []
    for i, (line, subset) in enumerate(_dfs(numbers, target)):
        if i < skip:
            continue
        if len(out) == max_lines:
            break
        out.append(line)
        if subset is not None:
            break
    return out


def check_subset_sum(expression: str, numbers: list[int], target: int) -> bool:
    """True iff `expression` is a sum ``a+b+...`` of numbers taken from `numbers` (each
    at most as often as it appears there) that equals `target`.

    >>> check_subset_sum("12+5+3", [12, 9, 8, 7, 5, 3], 20)
    True
    >>> check_subset_sum("12+8", [12, 9, 7, 5, 3], 20)  # 8 is not in the list
    False
    >>> check_subset_sum("5+5+5+5", [12, 9, 8, 7, 5, 3], 20)  # 5 used more than once
    False
    >>> check_subset_sum("9" * 5000, [12, 9, 8, 7, 5, 3], 20)  # past int()'s digit limit: no exception
    False
    """
    expression = expression.replace(" ", "")
    if not _SUM.match(expression):
        return False
    try:
        used = [int(x) for x in expression.split("+")]
    except ValueError:  # a number past Python's 4,300-digit limit: in no list, a wrong answer
        return False
    return sum(used) == target and not Counter(used) - Counter(numbers)


def _extra_check(kind: int, chosen: list[int], numbers: list[int], target: int, rng: random.Random) -> str:
    """One redundant re-check of an answer already checked (it never changes it)."""
    if kind == 0:  # the sum again, in another order
        order = chosen[:]
        rng.shuffle(order)
        return f"check again: {'+'.join(map(str, order))}={target}. ok"
    if kind == 1:  # take the parts back off the target one by one
        steps, left = [], target
        for n in chosen:
            steps.append(f"{left}-{n}={left - n}")
            left -= n
        return f"check again: {', '.join(steps)}. ok"
    if kind == 2:  # every part is one of the given numbers
        return f"check again: {' '.join(map(str, chosen))} are in {' '.join(map(str, numbers))}. ok"
    # the running sum, part by part
    steps, total = [], 0
    for n in chosen:
        steps.append(f"{total}+{n}={total + n}")
        total += n
    return f"check again: {', '.join(steps)}. ok"


N_CHECK_KINDS = 4


class SubsetSumTask:
    """Numbers from a list (each at most once) that sum to a target; the answer is a sum.

    Overthinking (report §2.3.3: the length penalty exists to trim it): with probability
    `overthink_prob` a warm-up trace, after its answer is found and checked, searches on
    for up to `max_research_frac` times as many lines as the search took (a fraction
    drawn uniformly) and then re-checks the same answer 1..`max_extra_checks` times
    (uniformly). Neither changes the answer; `warmup_trace(..., concise=True)` leaves
    both out.

    >>> t = SubsetSumTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    >>> t.verify("answer: 1+1", "9 5 3=8")
    False
    """

    name = "subset_sum"
    levels = tuple(SUBSET_SUM_LEVELS)
    # Lines carry their path and compare with the target ("12+7: 12+7=19 < 20, go on"); an
    # earlier format wrote the remainder ("12+7=19, need 1"), a subtraction the built-in
    # model got wrong on most failed level-3 answers (docs/long_cot.md).

    def __init__(self, overthink_prob: float = 0.8, max_research_frac: float = 1.5, max_extra_checks: int = 2):
        if not 0 <= overthink_prob <= 1 or max_research_frac < 0 or max_extra_checks < 0:
            raise ValueError("need 0 <= overthink_prob <= 1, max_research_frac >= 0, max_extra_checks >= 0")
        self.overthink_prob = overthink_prob
        self.max_research_frac = max_research_frac
        self.max_extra_checks = max_extra_checks

    def generate(self, rng: random.Random, level: int) -> Problem:
        count, largest = SUBSET_SUM_LEVELS[level]
        while True:
            nums = sorted(rng.sample(range(1, largest + 1), count), reverse=True)
            target = sum(rng.sample(nums, rng.randint(2, count - 1)))
            found = search_lines(nums, target, MAX_SEARCH_LINES)
            if found is not None:
                break
        shown = " ".join(map(str, nums))
        # The ground truth holds the numbers and the target; any valid subset scores.
        return Problem(
            question=f"Pick some of {shown} (each at most once) that sum to {target}.",
            answer=f"{shown}={target}",
            level=level,
            meta={"numbers": nums, "target": target, "solution": "+".join(map(str, found[1]))},
        )

    def verify(self, response: str, answer: str) -> bool:
        """The final answer line is a sum of listed numbers equal to the target.

        >>> SubsetSumTask().verify("5: 0+5=5 < 8, go on\\nanswer: 5+3", "9 5 3=8")
        True
        >>> SubsetSumTask().verify("answer: 5+3=8", "9 5 3=8")  # "sum = target" is fine
        True
        >>> SubsetSumTask().verify("answer: 9", "9 5 3=8")
        False
        """
        nums_s, target_s = answer.split("=")
        got = extract_answer(response)
        if got is None:
            return False
        expr, _, rhs = got.partition("=")
        if rhs and rhs.strip().rstrip(".") != target_s:
            return False
        return check_subset_sum(expr, [int(x) for x in nums_s.split()], int(target_s))

    def draw_overthinking(self, rng: random.Random, search_len: int) -> tuple[int, int]:
        """(continued-search lines, extra re-checks) for one trace whose search took
        `search_len` lines: (0, 0) with probability 1 - overthink_prob."""
        if rng.random() >= self.overthink_prob:
            return 0, 0
        research = max(0, min(round(rng.uniform(0, self.max_research_frac) * search_len), MAX_TRACE_LINES - search_len))
        checks = rng.randint(1, self.max_extra_checks) if self.max_extra_checks else 0
        return research, checks

    def warmup_trace(self, problem: Problem, rng: random.Random, *, concise: bool = False) -> str:
        """Plan; the depth-first search with its dead ends and steps back; one check;
        unless `concise`, the overthinking drawn by `draw_overthinking` (search on, then
        re-check the same answer); the answer."""
        nums, target = problem.meta["numbers"], problem.meta["target"]
        lines, chosen = search_lines(nums, target)
        answer = "+".join(map(str, chosen))
        out = [f"plan: make {target} from the list, largest first, back up on a dead end."]
        out += lines
        out.append(f"check: {answer}={target}, each from the list once. ok")
        research, checks = (0, 0) if concise else self.draw_overthinking(rng, len(lines))
        more = continued_search(nums, target, len(lines), research) if research else []
        if more:
            out.append("check again: search on for another way.")
            out += more
            out.append(f"check again: keep {answer}. ok")
        kinds: list[int] = []
        while len(kinds) < checks:  # shuffled rounds of all kinds: never one line looping
            round_ = rng.sample(range(N_CHECK_KINDS), N_CHECK_KINDS)
            if kinds and round_[0] == kinds[-1]:
                round_.reverse()
            kinds += round_
        out += [_extra_check(k, chosen, nums, target, rng) for k in kinds[:checks]]
        out.append(f"answer: {answer}")
        return "\n".join(out)
