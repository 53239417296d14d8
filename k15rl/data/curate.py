r"""Prompt-set curation (report §2.1): drop questions whose answers a rule-based
verifier cannot check reliably, and questions a model answers without reasoning.

Heuristic filters (plain functions of the question and the answer, no model):

- multiple choice: two or more options marked (A) / A) / A. / A: at line starts, or inline
  "(A) ... (B) ...", or phrases such as "which of the following" and "answer choices",
  or an answer that is a bare option letter A-E. A guess is right often enough to reward
  guessing.
- true/false: an answer that is true/false/yes/no/correct/incorrect, or a question that
  says "true or false", "true/false", "T/F" or "yes or no". Half of all guesses win.
- proof: "prove", "proof", "show that", "demonstrate that", "verify that", or an answer
  that is not a value ("proof", "QED", or longer than 200 characters). A final-answer
  check cannot verify a proof.

Rows with test cases (code) are checked by running them, so the proof and true/false
rules that look at the answer do not apply to them.

Easy-to-hack filter (model): ask the model for the answer with no chain of thought
(`DIRECT_INSTRUCTION` appended to the question, a short token budget) N = 8 times; if any
attempt is correct the prompt is dropped, since a policy could learn to guess it.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Sequence

from k15rl.types import Prompt

DIRECT_INSTRUCTION = ("Give only the final answer, with no explanation or working, "
                      "on one line of the form: answer: <answer>")

_OPTION_LINE = re.compile(r"^\s*\(?([A-Ea-e])[\).:]\s+\S", re.MULTILINE)
_OPTION_INLINE = re.compile(r"\(([A-E])\)\s*[^\s)]")
_MC_PHRASES = re.compile(
    r"\b(which of the following|answer choices|choose the (correct|best)|select the (correct|best)"
    r"|(correct|right) option|options? [A-E]\b)", re.IGNORECASE)
_MC_ANSWER = re.compile(r"^\(?[A-E]\)?[.:]?$")
_TF_ANSWERS = {"true", "false", "yes", "no", "correct", "incorrect", "t", "f"}
_TF_PHRASES = re.compile(r"(\btrue\s+or\s+false\b|\btrue\s*/\s*false\b|\bT\s*/\s*F\b|\byes\s+or\s+no\b"
                         r"|\byes\s*/\s*no\b)", re.IGNORECASE)
_PROOF_PHRASES = re.compile(r"\b(prove|proof|show that|demonstrate that|verify that)\b", re.IGNORECASE)
_PROOF_ANSWERS = {"proof", "see proof", "qed", "q.e.d.", "q.e.d", "n/a", "none"}
MAX_VALUE_ANSWER_CHARS = 200

HEURISTICS = ("multiple_choice", "true_false", "proof")


def is_multiple_choice(question: str, answer: str) -> bool:
    """Options lettered A, B, ... or an option letter as the answer.

    >>> is_multiple_choice("What is 2+2?\\n(A) 3\\n(B) 4\\n(C) 5", "B")
    True
    >>> is_multiple_choice("Compute 2+2. Options: (A) 3 (B) 4", "4")
    True
    >>> is_multiple_choice("A. Smith buys 3 apples and 4 pears. How many fruits?", "7")
    False
    >>> is_multiple_choice("Triangle ABC has AB = 3 and BC = 4. Find AC.", "5")
    False
    """
    letters = {m.upper() for m in _OPTION_LINE.findall(question)}
    if {"A", "B"} <= letters:
        return True
    if {"A", "B"} <= set(_OPTION_INLINE.findall(question)):
        return True
    return bool(_MC_PHRASES.search(question) or _MC_ANSWER.match(answer.strip()))


def is_true_false(question: str, answer: str) -> bool:
    """A two-valued answer, or a question that asks for one.

    >>> is_true_false("True or false: every prime is odd.", "false")
    True
    >>> is_true_false("Is 91 prime?", "No")
    True
    >>> is_true_false("How many of the statements below are true?", "3")
    False
    """
    return answer.strip().lower().rstrip(".") in _TF_ANSWERS or bool(_TF_PHRASES.search(question))


def is_proof(question: str, answer: str) -> bool:
    """A question asking for a proof, or an answer that is not a checkable value.

    >>> is_proof("Prove that there are infinitely many primes.", "")
    True
    >>> is_proof("Show that n^2 - n is even for every integer n.", "")
    True
    >>> is_proof("Improve the bound: find the least n with 2^n > 1000.", "10")
    False
    """
    a = answer.strip().lower()
    return bool(_PROOF_PHRASES.search(question)) or a in _PROOF_ANSWERS or len(a) > MAX_VALUE_ANSWER_CHARS


def heuristic_reasons(p: Prompt) -> list[str]:
    """Names of the heuristic filters that reject `p` (empty: keep it)."""
    q, a = p.question, p.answer
    code = "test_cases" in p.meta
    out = []
    if is_multiple_choice(q, a):
        out.append("multiple_choice")
    if is_true_false(q, "" if code else a):
        out.append("true_false")
    if is_proof(q, "" if code else a):
        out.append("proof")
    return out


def direct_prompt(p: Prompt, instruction: str = DIRECT_INSTRUCTION) -> Prompt:
    """`p` with the last user message asking for the answer alone, without reasoning."""
    msgs = list(p.messages)
    i = max(j for j, (r, _) in enumerate(msgs) if r == "user")
    msgs[i] = ("user", f"{msgs[i][1]}\n\n{instruction}")
    return dataclasses.replace(p, messages=tuple(msgs))


def easy_to_hack(engine, tokenizer, prompts: Sequence[Prompt], *, attempts: int = 8, max_new_tokens: int = 32,
                 temperature: float = 1.0, seed: int = 0, prompts_per_batch: int = 32,
                 stop_token_ids: Sequence[int] = (), instruction: str = DIRECT_INSTRUCTION,
                 rewards=None, stop_strings: Sequence[str] = ()) -> list[bool]:
    """For each prompt, whether any of `attempts` direct answers (no chain of thought,
    at most `max_new_tokens` tokens) is correct (report §2.1), by its verifier or by
    `rewards` (a RewardRouter: the training run's reward.* settings)."""
    from k15rl.data.difficulty import SampleSettings, correct_counts

    settings = SampleSettings(samples=attempts, temperature=temperature, max_new_tokens=max_new_tokens,
                              prompts_per_batch=prompts_per_batch, seed=seed, stop_strings=tuple(stop_strings))
    direct = [direct_prompt(p, instruction) for p in prompts]
    counts = correct_counts(engine, tokenizer, direct, settings, stop_token_ids, desc="easy-to-hack", rewards=rewards)
    return [c > 0 for c in counts]


def summary_table(prompts: Sequence[Prompt]) -> str:
    """Counts of prompts per domain (rows) and difficulty (columns), as aligned text.

    >>> from k15rl.types import Prompt
    >>> ps = [Prompt(str(i), (("user", "q"),), "1", "math", meta={"domain": d, "difficulty": v})
    ...       for i, (d, v) in enumerate([("algebra", 1.0), ("algebra", 2.0), ("geometry", 2.0)])]
    >>> print(summary_table(ps))
    domain   | 1 | 2 | total
    algebra  | 1 | 1 |     2
    geometry | 0 | 1 |     1
    total    | 1 | 2 |     3
    """
    def diff(p: Prompt) -> str:
        d = p.meta.get("difficulty")
        if d is None and "pass_rate" in p.meta:
            return f"pass {p.meta['pass_rate']:.1f}"
        if d is None:
            return str(p.level) if p.level else "-"
        return f"{d:g}"

    cells = Counter((str(p.meta.get("domain", p.task)), diff(p)) for p in prompts)
    domains = sorted({d for d, _ in cells})
    cols = sorted({c for _, c in cells}, key=lambda c: (c == "-", _num(c), c))
    header = ["domain", *cols, "total"]
    rows = [[d, *(str(cells[(d, c)]) for c in cols), str(sum(cells[(d, c)] for c in cols))] for d in domains]
    rows.append(["total", *(str(sum(cells[(d, c)] for d in domains)) for c in cols), str(len(prompts))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return " | ".join([r[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(r[1:], widths[1:])])

    return "\n".join(fmt(r) for r in [header, *rows])


def _num(c: str) -> float:
    try:
        return float(c.split()[-1])
    except ValueError:
        return float("inf")
