"""Sorting letters: put distinct letters in alphabetical order, one pick per step.

Each step picks the next letter in order among those left; one slip (a skipped, repeated
or misplaced letter) ruins the answer, so the chance of failure grows with the number of
letters (the levels). Short traces and single-token letters make it learnable by a tiny
model on a CPU in minutes: the default task of the built-in demo.
"""

from __future__ import annotations

import random
import re
import string

from k15rl.tasks.base import Problem
from k15rl.verifiers import extract_answer

# level -> number of letters
SORT_LEVELS: dict[int, int] = {1: 4, 2: 6, 3: 9, 4: 12, 5: 16, 6: 20}


class SortTask:
    """Sort distinct lowercase letters; the answer is the sorted letters, space-separated.

    >>> t = SortTask()
    >>> p = t.generate(random.Random(0), 2)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    >>> t.verify("answer: a c b", "a b c")
    False
    """

    name = "sort"
    levels = tuple(SORT_LEVELS)

    def __init__(self, mistake_prob: float = 0.05):
        self.mistake_prob = mistake_prob

    def generate(self, rng: random.Random, level: int) -> Problem:
        letters = rng.sample(string.ascii_lowercase, SORT_LEVELS[level])
        return Problem(
            # Spaces keep every letter one token, the same in the question and the trace.
            question=f"Sort these letters: {' '.join(letters)}.",
            answer=" ".join(sorted(letters)),
            level=level,
            meta={"letters": letters},
        )

    def verify(self, response: str, answer: str) -> bool:
        """The sorted letters, one per item, after the final `answer:`.

        >>> t = SortTask()
        >>> [t.verify(r, "a b c") for r in ("answer: a b c", "answer: [a, b, c]", "answer: ab c 1", "answer: a b")]
        [True, True, False, False]
        """
        got = extract_answer(response)
        if got is None:
            return False
        # the letters in order, one per item: "a b c", "A, B, C", "[a, b, c]", "a; b; c"
        return re.sub(r"[\[\](){}`'\";,]", " ", got.lower()).split() == answer.split()

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Plan; one line per pick (the first letter in order among those left);
        sometimes a wrong pick that is noticed and redone (report §2.2); a check that
        every letter was used; the answer."""
        letters = sorted(problem.meta["letters"])
        out = [f"plan: {len(letters)} letters, pick the first in order each time, then check."]
        for i, c in enumerate(letters):
            left = letters[i + 1 :]
            if left and rng.random() < self.mistake_prob:
                wrong = rng.choice(left)
                out.append(f"{i + 1}: {wrong}")
                out.append(f"wait, {c} comes before {wrong}. redo.")
            out.append(f"{i + 1}: {c}")
        out.append(f"check: {len(letters)} letters, none left. ok")
        out.append(f"answer: {' '.join(letters)}")
        return "\n".join(out)
