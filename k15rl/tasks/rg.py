"""reasoning-gym generators as k15rl tasks, for real pretrained models (report §2.3.1:
a prompt set of diverse, verifiable problems with a difficulty spread).

Each level is a fixed reasoning-gym configuration (terms and digits); problems come
from the generator, deterministically by index, and `make_prompts` splits them into
train and test by the question's hash like every built-in task. Answers are integers,
checked by `verify_integer` on the response's final `answer:` line (or `\\boxed{}`, or
"the answer is N"). `gsm_symbolic` (GSM8K-style word problems, one difficulty in
reasoning-gym 0.1.x) carries a worked solution that serves as the warm-up trace.

Needs `pip install 'k15rl[data]'`; reasoning-gym is imported on first use.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from k15rl.errors import UserError
from k15rl.tasks.base import Problem
from k15rl.verifiers import verify_integer

# An instruct model follows this (the data.system_prompt of the SmolLM2 preset): the
# verifier reads the last `answer:` line.
SYSTEM_PROMPT = "Solve the problem. Think step by step, then end with a line 'answer: <number>'."
POOL = 1_000_000  # generator indices drawn from: far more problems than any split needs

# task -> (reasoning-gym dataset, level -> its configuration)
RG_LEVELS: dict[str, tuple[str, dict[int, dict[str, Any]]]] = {
    "rg_chain_sum": ("chain_sum", {
        1: dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
        2: dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1),
        3: dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2),
        4: dict(min_terms=3, max_terms=3, min_digits=2, max_digits=2),
        5: dict(min_terms=4, max_terms=4, min_digits=2, max_digits=2),
        6: dict(min_terms=4, max_terms=4, min_digits=3, max_digits=3),
    }),
    "rg_basic_arithmetic": ("basic_arithmetic", {
        1: dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1, operators=("+", "-"), allow_parentheses=False,
                allow_negation=False),
        2: dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1, operators=("+", "-", "*"),
                allow_parentheses=False, allow_negation=False),
        3: dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2, operators=("+", "-", "*"),
                allow_parentheses=False, allow_negation=False),
        4: dict(min_terms=3, max_terms=3, min_digits=2, max_digits=2, operators=("+", "-", "*"),
                allow_parentheses=False, allow_negation=False),
        5: dict(min_terms=3, max_terms=3, min_digits=2, max_digits=2, operators=("+", "-", "*"),
                allow_parentheses=True, allow_negation=False),
        6: dict(min_terms=4, max_terms=4, min_digits=2, max_digits=2, operators=("+", "-", "*"),
                allow_parentheses=True, allow_negation=True),
    }),
    "rg_gsm_symbolic": ("gsm_symbolic", {1: {}}),
}


@functools.lru_cache(maxsize=None)
def _dataset(name: str, level_cfg: tuple):
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("reasoning-gym tasks need the reasoning-gym package: pip install 'k15rl[data]'") from None
    return reasoning_gym.create_dataset(name, size=POOL, seed=0, **dict(level_cfg))


class ReasoningGymTask:
    """One reasoning-gym generator with levels (see RG_LEVELS).

    >>> t = ReasoningGymTask("rg_chain_sum")
    >>> p = t.generate(random.Random(0), 1)
    >>> t.verify("so the sum is\\nanswer: " + p.answer, p.answer), t.verify("answer: 0.5", p.answer)
    (True, False)
    """

    def __init__(self, name: str):
        self.name = name
        self.dataset, self._levels = RG_LEVELS[name]
        self.levels = tuple(self._levels)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self._levels:
            raise ValueError(f"task {self.name} has levels {list(self.levels)} (got {level})")
        ds = _dataset(self.dataset, tuple(sorted(self._levels[level].items())))
        index = rng.randrange(POOL)
        item = ds[index]
        meta = {"index": index}
        for key in ("answer_cot", "expression"):
            if item.get("metadata", {}).get(key):
                meta[key] = item["metadata"][key]
        return Problem(question=item["question"].strip(), answer=str(item["answer"]).strip(), level=level, meta=meta)

    def verify(self, response: str, answer: str) -> bool:
        return verify_integer(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """The generator's own worked solution (gsm_symbolic), else the expression and its
        value: a short solution in the answer format (the few-shot examples, data.few_shot)."""
        cot = problem.meta.get("answer_cot")
        if cot:
            body = cot.strip().split("####")[0].strip()
        elif problem.meta.get("expression"):
            body = f"{problem.meta['expression']} = {problem.answer}"
        else:
            body = "I work it out step by step."
        return f"{body}\nanswer: {problem.answer}"


def _factory(name: str):
    return functools.partial(ReasoningGymTask, name)


RG_TASKS = {name: _factory(name) for name in RG_LEVELS}
