"""Pointer hops: follow a chain of rules ``a->c`` from a start node for a number of hops.

State tracking: every hop is one lookup, and one wrong lookup ruins the rest, so the
chance of a slip grows with the number of hops (the levels). Each lookup is by position
(the node after the matching ``->``), which tiny models learn slowly (docs/design.md).
"""

from __future__ import annotations

import random
import string

from k15rl.tasks.base import Problem
from k15rl.verifiers import extract_answer

# level -> (number of nodes, number of hops)
HOPS_LEVELS: dict[int, tuple[int, int]] = {
    1: (4, 1),
    2: (6, 2),
    3: (8, 4),
    4: (10, 6),
    5: (12, 9),
    6: (12, 12),
}


class HopsTask:
    """Rules map each node to one node; the answer is where `hops` hops from the start lead.

    >>> t = HopsTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "hops"
    levels = tuple(HOPS_LEVELS)

    def __init__(self, mistake_prob: float = 0.05):
        self.mistake_prob = mistake_prob

    def generate(self, rng: random.Random, level: int) -> Problem:
        n_nodes, hops = HOPS_LEVELS[level]
        nodes = rng.sample(string.ascii_lowercase, n_nodes)
        targets = nodes[:]
        rng.shuffle(targets)
        rules = dict(zip(nodes, targets))
        order = nodes[:]
        rng.shuffle(order)
        start = rng.choice(nodes)
        path = [start]
        for _ in range(hops):
            path.append(rules[path[-1]])
        # Spaces around every node keep each node one token (the same in rules and trace).
        listed = ", ".join(f"{a} -> {rules[a]}" for a in order)
        return Problem(
            question=f"Rules: {listed}. Start at {start} and make {hops} hops.",
            answer=path[-1],
            level=level,
            meta={"rules": rules, "start": start, "hops": hops},
        )

    def verify(self, response: str, answer: str) -> bool:
        """The final answer is the node letter.

        >>> HopsTask().verify("x -> y\\nanswer: y", "y")
        True
        >>> HopsTask().verify("answer: y z", "y")
        False
        """
        got = extract_answer(response)
        return got is not None and got.strip().rstrip(".") == answer

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Plan; one line per hop (looking the rule up); sometimes a wrong lookup that is
        noticed and redone (report §2.2); a check of the hop count; the answer."""
        rules, node, hops = problem.meta["rules"], problem.meta["start"], problem.meta["hops"]
        out = [f"plan: {hops} hops from {node}, look up each rule, count."]
        for i in range(hops):
            nxt = rules[node]
            if rng.random() < self.mistake_prob:
                wrong = rng.choice([x for x in rules if x != nxt])
                out.append(f"{i + 1}: {node} -> {wrong}")
                out.append(f"wait, the rule is {node} -> {nxt}. redo.")
            out.append(f"{i + 1}: {node} -> {nxt}")
            node = nxt
        out.append(f"check: {hops} hops. ok")
        out.append(f"answer: {node}")
        return "\n".join(out)
