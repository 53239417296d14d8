"""Rule-based verifiers: r(x, y, y*) in {0, 1} (report §2.3.1, §2.3.5).

A verifier is a plain function `(response: str, answer: str) -> bool`. Answers are read
from a fixed final-answer format: whichever comes last of the last line that starts with
``answer:`` and the last ``\\boxed{...}``; else a final "the answer is X".

The text is a policy's output, so reading it must take time linear in its length: a
regular expression that backtracks over long runs of spaces or blank lines (a response cut
at its token budget often ends in one) holds the GIL for seconds to minutes, and no reward
time limit can interrupt it. Lines are therefore matched one at a time, each by a pattern
anchored at its start.
"""

from __future__ import annotations

import re

# an answer line: "answer: X", "Final answer = X", markdown "**Answer:** X", "### Answer: X", "> answer: X"
_ANSWER_LINE = re.compile(r"[ \t>#*_]*(?:final[ \t]+)?answer[ \t*_]*[:=](.*)", re.IGNORECASE)
# Instruction-tuned models often end with "The answer is 10." instead of the fixed format.
_ANSWER_IS = re.compile(r"\banswer is\b", re.IGNORECASE)
_BOXED = "\\boxed{"
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _lines_from_the_end(text: str):
    """(start, line) of each line of `text`, last first."""
    end = len(text)
    while end >= 0:
        start = text.rfind("\n", 0, end) + 1
        yield start, text[start:end]
        end = start - 1


def _clean(value: str) -> str:
    """An answer without its markup: surrounding spaces, a final period, markdown bold,
    math delimiters (``$7$``, ``\\(7\\)``, ``\\[7\\]``).

    >>> [_clean(v) for v in (" 42 ", "**7**.", "$\\\\frac{1}{2}$.", "\\\\[ 4 \\\\]", "3*4")]
    ['42', '7', '\\\\frac{1}{2}', '4', '3*4']
    """
    v = value.strip()
    for _ in range(2):  # "**$7$**." -> "7"
        v = v.rstrip().removesuffix(".").strip().strip("*").strip()
        for a, b in _DELIMITERS:
            inner = v[len(a): len(v) - len(b)]
            # one pair around it all: "$$x$$ or $$y$$" is two answers, not one in $$...$$
            if len(v) >= len(a) + len(b) and v.startswith(a) and v.endswith(b) and a not in inner and b not in inner:
                v = inner.strip()
                break
    return v


def _answer_line(text: str) -> tuple[int, str] | None:
    """(start, value) of the last answer line with a value; a line ``answer:`` alone takes
    the next line that is not blank."""
    following = None  # the nearest non-blank line after the current one
    for start, line in _lines_from_the_end(text):
        m = _ANSWER_LINE.match(line)
        if m:
            value = _clean(m.group(1))
            if not value and following is not None:
                value = _clean(following)
            if value:
                return start, value
        if line.strip():
            following = line
    return None


def _boxed(text: str, tries: int = 3, answer: bool = True) -> tuple[int, str] | None:
    """(start, content) of the last ``\\boxed{...}`` whose braces close and that holds
    something; an unclosed or empty one after it is passed over (at most `tries` are looked
    at: each is a scan to the end). The content without its markup (`_clean`). With
    `answer=False`, the last closed one as it is, empty or not."""
    end = len(text)
    for _ in range(tries):
        start = text.rfind(_BOXED, 0, end)
        if start < 0:
            return None
        i = start + len(_BOXED)
        depth = 1
        for j in range(i, len(text)):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
        if depth == 0:
            content = text[i:j] if not answer else _clean(text[i:j])
            if content or not answer:
                return start, content
        end = start
    return None


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` whose braces close, with nested braces, as it is.

    >>> extract_boxed(r"so \boxed{\frac{1}{2}} and \boxed{3}")
    '3'
    >>> extract_boxed(r"\boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed{7} then \boxed{unclosed")
    '7'
    >>> extract_boxed("none") is None
    True
    """
    found = _boxed(text, answer=False)
    return None if found is None else found[1]


def extract_answer(text: str) -> str | None:
    r"""The final answer of a response: of the last ``answer:`` line and the last
    ``\boxed{}``, the one that comes last; else the last "the answer is X" (the rest of
    its line). Markup around the answer goes (`_clean`).

    >>> extract_answer("plan...\nanswer: 42")
    '42'
    >>> extract_answer("Answer = x+1\nthen\nanswer: 7\n")
    '7'
    >>> extract_answer(r"thus \boxed{12}")
    '12'
    >>> extract_answer("3 + 5 + 2 = 10\n\nThe answer is 10.")
    '10'
    >>> extract_answer("answer: 7\nno, 3+4 is 8: \\boxed{8}")  # the later one
    '8'
    >>> extract_answer("**Final Answer:** $\\frac{1}{2}$.")
    '\\frac{1}{2}'
    >>> extract_answer("no final line") is None
    True
    """
    line, box = _answer_line(text), _boxed(text)
    if line is not None and (box is None or line[0] > box[0]):
        return line[1]
    if box is not None:
        return box[1]
    following = None  # "The answer is:" alone takes the next line that is not blank
    for _, text_line in _lines_from_the_end(text):
        last = None
        for last in _ANSWER_IS.finditer(text_line):
            pass
        if last is not None:
            value = _clean(text_line[last.end():].lstrip(" \t:"))
            if not value and following is not None:
                value = _clean(following)
            if value:
                return value
        if text_line.strip():
            following = text_line
    return None


# An integer written out: digits, or digits with commas between groups of three (1,234).
_INTEGER = re.compile(r"[+-]?(?:\d+|\d{1,3}(?:,\d{3})+)")
# A number written out (no operation left to do): 391, -2.5, .5, 1/2, \frac{1}{2}, \dfrac{-3}{4}, \frac12.
_NUMBER = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?|\\[dt]?frac(?:\{[+-]?\d+\}\{\d+\}|\d\d))")
_SCIENTIFIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:(?:\\times|\\cdot|×)10\^(?:\{[+-]?\d+\}|\d)|e[+-]?\d+)")
# A number in a text or bold wrapper: \text{3}, \textbf{10}, \mathbf{5}.
_WRAPPED = re.compile(r"\\(?:text|textbf|mathbf|mathrm|boldsymbol|mbox)\{([^{}]*)\}")
# A unit after the number, maybe squared: \text{ cm}, \mathrm{m}^2, \text{m}^{3}.
_UNIT = re.compile(r"\\(?:text|mathrm|mbox)\{[^{}]*\}(?:\^(?:\{\d\}|\d))?$")
# Spacing, percent and degree signs, dollar signs, thousands braces.
_NUMBER_DECOR = re.compile(r"\\[!,;: ]|\{,\}|\\%|%|\^\\circ|\^\{\\circ\}|°|\\\$|\$")
_VARIABLE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=")
MAX_MATH_ANSWER_CHARS = 1000  # longer final answers are not compared (each would cost seconds of sympy)


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
    >>> verify_integer("answer: 3, 4", "34"), verify_integer("answer: 3 4", "34")  # two numbers
    (False, False)
    """
    got = extract_answer(response)
    if got is None or _INTEGER.fullmatch(got) is None:
        return False
    gold = int(answer)  # a dataset answer that is no integer is the data's error: it raises
    try:
        return int(got.replace(",", "")) == gold
    except ValueError:  # over Python's 4,300-digit limit: a wrong answer, not an error
        return False


def is_number(text: str) -> bool:
    r"""Whether `text` is a number written out, with nothing left to compute: an integer,
    a decimal, a fraction that is no integer, scientific notation, maybe signed, with LaTeX
    spacing, thousands commas, a unit, a percent or degree sign, a text or bold wrapper,
    parentheses or ``x =`` around it.

    >>> [is_number(t) for t in ("391", "-2.5", r"\frac{1}{2}", "1,234", r"x = 5\%", r"3 \text{ cm}",
    ...                         r"1.5 \times 10^3", r"\textbf{10}", r"4\,\mathrm{cm}^2", "(3)", "- 5", "a_1 = 5")]
    [True, True, True, True, True, True, True, True, True, True, True, True]
    >>> [is_number(t) for t in (r"17 \times 23", "10!", r"\sqrt{8}", "2^{10}", r"\binom{10}{3}", "1 2", "782/2")]
    [False, False, False, False, False, False, False]
    """
    t = _WRAPPED.sub(lambda m: m.group(1) if _digits_only(m.group(1)) else m.group(0), text.strip())
    for _ in range(2):  # "4 \text{ cm}^2", "5\ \text{cm}"
        t = _NUMBER_DECOR.sub("", _UNIT.sub("", t.strip())).strip()
    m = _VARIABLE.match(t)
    if m:
        t = t[m.end():].strip()
    if t.startswith("(") and t.endswith(")"):
        t = t[1:-1].strip()
    t = re.sub(r"(?<=\d)\s+(?=\d)", "#", t)  # a space between digits: two numbers
    t = re.sub(r"\s+", "", t)
    if _INTEGER.fullmatch(t):  # thousands commas
        t = t.replace(",", "")
    if _SCIENTIFIC.fullmatch(t):
        return True
    if _NUMBER.fullmatch(t) is None:
        return False
    frac = re.fullmatch(r"[+-]?(\d+)/(\d+)|[+-]?\\[dt]?frac\{[+-]?(\d+)\}\{(\d+)\}", t)
    if frac:  # 782/2 for 391: a division left to do
        p, q = (int(g) for g in (frac.groups()[:2] if frac.group(1) else frac.groups()[2:]))
        return q != 0 and p % q != 0
    return True


def _digits_only(text: str) -> bool:
    return re.fullmatch(r"\s*[+-]?[\d.,]+\s*", text) is not None


def verify_math(response: str, answer: str, timeout_seconds: float | None = None) -> bool:
    r"""Mathematical equivalence of the final answer with `answer`, via `math-verify`.

    Handles LaTeX, fractions, sets, intervals and symbolic equality
    (``a^2-4`` vs ``(a+2)(a-2)``, report §2.3.5). The comparison runs in a worker process
    (`math_pool.math_equal`): a final answer that would keep sympy busy for ever (such as
    ``9^{9^{9^9}}``) raises TimeoutError after `timeout_seconds` (None: `math_pool.TIMEOUT_S`,
    10 s), from any thread.

    Where the reference answer is a number (`is_number`), so must the final answer be:
    sympy would otherwise work out what the response left undone, and a policy learns to
    copy the question (``17 \times 23`` for 391, ``\sum_{k=1}^{100} k`` for 5050). A final
    answer over `MAX_MATH_ANSWER_CHARS` characters is not compared.

    >>> verify_math("answer: (a+2)(a-2)", "a^2-4")
    True
    >>> verify_math(r"so \boxed{\frac{1}{2}}", "0.5")
    True
    >>> verify_math("answer: 3", "4")
    False
    >>> verify_math(r"answer: 17 \times 23", "391")  # the question, not its answer
    False
    >>> verify_math("no answer here", "4")
    False
    """
    got = extract_answer(response)
    if got is None or len(got) > MAX_MATH_ANSWER_CHARS or (is_number(answer) and not is_number(got)):
        return False
    from k15rl.verifiers import math_pool  # worker processes: only where math is verified

    return math_pool.math_equal(answer, got, math_pool.TIMEOUT_S if timeout_seconds is None else timeout_seconds)
