"""Rule-based verifiers: r(x, y, y*) in {0, 1} (report §2.3.1, §2.3.5).

A verifier is a plain function `(response: str, answer: str) -> bool`. Answers are read
from a fixed final-answer format: the last line that starts with ``answer:``, or the last
``\\boxed{...}``.
"""

from __future__ import annotations

import re

from k15rl.verifiers import math_pool

_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
# Instruction-tuned models often end with "The answer is 10." instead of the fixed format.
_ANSWER_IS = re.compile(r"\banswer is\s*:?\s*([^\n]+?)\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}``, with nested braces.

    >>> extract_boxed(r"so \boxed{\frac{1}{2}} and \boxed{3}")
    '3'
    >>> extract_boxed(r"\boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_boxed("none") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: no answer


def extract_answer(text: str) -> str | None:
    r"""The final answer of a response: the last ``answer:`` line, else the last
    ``\boxed{}``, else the last "the answer is X" at the end of a line.

    >>> extract_answer("plan...\nanswer: 42")
    '42'
    >>> extract_answer("Answer = x+1\nthen\nanswer: 7\n")
    '7'
    >>> extract_answer(r"thus \boxed{12}")
    '12'
    >>> extract_answer("3 + 5 + 2 = 10\n\nThe answer is 10.")
    '10'
    >>> extract_answer("no final line") is None
    True
    """
    matches = _ANSWER_LINE.findall(text)
    if matches:
        return matches[-1]
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS.findall(text)
    return matches[-1] if matches else None


def verify_integer(response: str, answer: str) -> bool:
    """True iff the response's final answer is the integer `answer`.

    >>> verify_integer("...\\nanswer: 1,234", "1234")
    True
    >>> verify_integer("answer: 1234.0", "1234")
    False
    >>> verify_integer("answer: -7", "-7")
    True
    >>> verify_integer("answer: 12 or 13", "12")
    False
    """
    got = extract_answer(response)
    if got is None:
        return False
    got = got.replace(",", "").replace(" ", "").rstrip(".")
    if re.fullmatch(r"[+-]?\d+", got) is None:
        return False
    gold = int(answer)  # a dataset answer that is no integer is the data's error: it raises
    try:
        return int(got) == gold
    except ValueError:  # over Python's 4,300-digit limit: a wrong answer, not an error
        return False


def verify_math(response: str, answer: str, timeout_seconds: float | None = None) -> bool:
    r"""Mathematical equivalence of the final answer with `answer`, via `math-verify`.

    Handles LaTeX, fractions, sets, intervals and symbolic equality
    (``a^2-4`` vs ``(a+2)(a-2)``, report §2.3.5). The comparison runs in a worker process
    (`math_pool.math_equal`): a final answer that would keep sympy busy for ever (such as
    ``9^{9^{9^9}}``) raises TimeoutError after `timeout_seconds` (None: `math_pool.TIMEOUT_S`,
    10 s), from any thread.

    >>> verify_math("answer: (a+2)(a-2)", "a^2-4")
    True
    >>> verify_math(r"so \boxed{\frac{1}{2}}", "0.5")
    True
    >>> verify_math("answer: 3", "4")
    False
    >>> verify_math("no answer here", "4")
    False
    """
    got = extract_answer(response)
    if got is None:
        return False
    return math_pool.math_equal(answer, got, math_pool.TIMEOUT_S if timeout_seconds is None else timeout_seconds)
