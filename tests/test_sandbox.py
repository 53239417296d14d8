"""The code sandbox, pool and code rewards on ordinary programs (report §2.3.5)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from k15rl.verifiers.code import code_reward, extract_program, job_from_spec, verify_code
from k15rl.verifiers.sandbox import Limits, StdioTest, run_function, run_outputs, run_stdio
from k15rl.verifiers.sandbox_pool import CodeJob, SandboxPool
from k15rl.types import Prompt

FAST = Limits(cpu_s=1, wall_s=1.5)
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


def test_stdio_pass_and_each_failure_reason():
    tests = [StdioTest("1 2", "3"), StdioTest("-5 5\n", "0\n")]
    r = run_stdio(ADD, tests, FAST)
    assert (r.reason, r.passed, r.total, r.reward) == ("pass", 2, 2, 1.0)
    assert run_stdio("print(3)", tests, FAST).reason == "wrong_answer"
    assert run_stdio("raise ValueError", tests, FAST).reason == "runtime_error"
    assert run_stdio("while True: pass", tests, FAST).reason == "timeout"
    assert run_stdio("x = bytearray(2**33)", tests, FAST).reason == "memory"
    assert run_stdio("print('y' * 10**6)", tests, FAST).reason == "output_limit"
    assert run_stdio(ADD, [], FAST).reason == "sandbox_error"


def test_stop_at_first_failure_or_run_all():
    tests = [StdioTest("1 1", "3"), StdioTest("1 2", "3")]
    first = run_stdio(ADD, tests, FAST)
    assert first.reason == "wrong_answer" and len(first.outcomes) == 1
    full = run_stdio(ADD, tests, FAST, stop_at_first_failure=False)
    assert [o.reason for o in full.outcomes] == ["wrong_answer", "pass"] and full.passed == 1


def test_outputs_are_compared_up_to_trailing_whitespace():
    assert run_stdio("print('1 2  ')\nprint()\n", [StdioTest("", "1 2\n")], FAST).reason == "pass"
    assert run_stdio("print('1  2')", [StdioTest("", "1 2")], FAST).reason == "wrong_answer"


def test_run_outputs_returns_what_was_printed():
    outs = run_outputs("print(int(input()) ** 2)", ["3", "x", "4"], FAST)
    assert [o.reason for o in outs] == ["pass", "runtime_error", "pass"]
    assert [o.stdout.strip() for o in outs] == ["9", "", "16"]


def test_function_style():
    check = "def check(candidate):\n    assert candidate([3, 1, 2]) == [1, 2, 3]\n"
    assert run_function("def srt(xs):\n    return sorted(xs)\n", check, "srt", FAST).reason == "pass"
    assert run_function("def srt(xs):\n    return xs\n", check, "srt", FAST).reason == "wrong_answer"
    assert run_function("def other(xs):\n    return xs\n", check, "srt", FAST).reason == "runtime_error"
    # modules of the standard library still work (namedtuple and warnings use frames)
    prog = "import collections, warnings\nP = collections.namedtuple('P', 'x')\ndef srt(xs):\n" \
           "    warnings.warn('w')\n    return sorted(xs)\n"
    assert run_function(prog, check, "srt", FAST).reason == "pass"


def test_the_program_sees_a_fresh_private_directory():
    # it holds the program's own source, as for `python solution.py`, and what it writes
    prog = "import os\nopen('mine', 'w').write('x')\nprint(sorted(os.listdir('.')), os.environ.get('HOME') == os.getcwd())"
    want = "['mine', 'solution.py'] True"
    r1 = run_stdio(prog, [StdioTest("", want), StdioTest("", want)], FAST)
    assert r1.reason == "pass", r1  # the second test does not see the first one's file


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_on_the_programs_own_functions(method):
    """The program is the interpreter's __main__ module, as when run as a file: a pool's
    workers find its functions and classes by name (pickled by reference), also when they
    re-import it (spawn)."""
    prog = (
        "import multiprocessing as mp, sys\n"
        "class Times:\n    def __init__(self, k): self.k = k\n    def __call__(self, x): return self.k * x\n"
        "def square(x):\n    return x * x\n"
        "if __name__ == '__main__':\n"
        f"    mp.set_start_method('{method}')\n"
        "    n = int(input())\n"
        "    with mp.Pool(2) as pool:\n"
        "        print(sum(pool.map(square, range(n))), sum(pool.map(Times(3), range(n))),"
        " sys.modules['__main__'].__file__)\n"
    )
    r = run_stdio(prog, [StdioTest("10\n", "285 135 solution.py")], FAST)
    assert r.reason == "pass", r
    # function mode: the judge calls a function that hands the program's own functions to
    # a process pool
    prog = ("from concurrent.futures import ProcessPoolExecutor\n"
            "def square(x):\n    return x * x\n"
            "def total(n):\n    with ProcessPoolExecutor(2) as ex:\n        return sum(ex.map(square, range(n)))\n")
    check = "def check(candidate):\n    assert candidate(10) == 285\n"
    assert run_function(prog, check, "total", FAST).reason == "pass"


def test_extract_program_and_specs():
    resp = "think\n```python\nprint(1)\n```\nthen better:\n```python\nprint(2)\n```"
    assert extract_program(resp) == "print(2)\n"
    with pytest.raises(ValueError, match="tests\\[0\\]"):
        job_from_spec("print(1)", {"tests": [{"input": 1, "output": "1"}]})
    with pytest.raises(ValueError, match="no tests"):
        job_from_spec("print(1)", {})
    job = job_from_spec("    return a + b\n", {"check": "x", "entry_point": "add", "prefix": "def add(a, b):\n"})
    assert job.program.startswith("def add(a, b):\n")


def test_code_reward_reads_tests_from_meta_or_answer():
    tests = [{"input": "2 3", "output": "5"}]
    good = f"```python\n{ADD}```"
    p_meta = Prompt("p", (("user", "add"),), "", "mycode", meta={"tests": tests})
    p_answer = Prompt("q", (("user", "add"),), json.dumps({"tests": tests}), "mycode")
    assert code_reward(good, p_meta) == 1.0 and code_reward(good, p_answer) == 1.0
    assert code_reward("no code", p_meta) == 0.0
    assert verify_code(good, json.dumps({"tests": tests}))


def test_pool_runs_in_parallel_and_keeps_order():
    jobs = [CodeJob("import time\ntime.sleep(0.5)\nprint(int(input()) + 1)", tests=(StdioTest(str(i), str(i + 1)),))
            for i in range(4)]
    t0 = time.monotonic()
    with SandboxPool(workers=4, limits=FAST) as pool:
        futures = [pool.submit(j) for j in jobs]
        results = [f.result() for f in futures]
    wall = time.monotonic() - t0
    assert [r.reason for r in results] == ["pass"] * 4
    assert wall < 4 * 0.5 + 0.5, f"4 sleeping programs took {wall:.2f} s with 4 workers"


def _world_usable_python() -> str | None:
    """An interpreter another uid can run (process isolation as root drops to one)."""
    for cand in (sys._base_executable, "/usr/bin/python3"):
        p = Path(os.path.realpath(cand))
        if all(q.stat().st_mode & stat.S_IXOTH for q in [p, *p.parents]):
            return str(p)
    return None


# Run by an ordinary user: the sandbox's own checks, printed as JSON (stdlib only).
AS_A_USER = """
import json, os, sys
from k15rl.verifiers.sandbox import Limits, StdioTest, run_function, run_stdio
FAST = Limits(cpu_s=1, wall_s=1.5)
oom = "print(open('/proc/self/oom_score_adj').read().strip())"
out = {"uid": os.getuid()}
for iso in ("auto", "process"):
    r = run_stdio(oom, [StdioTest("", "1000")], FAST, isolation=iso)
    out[iso] = {"isolation": r.isolation, "oom": r.reason,
                "add": run_stdio("print(sum(map(int, input().split())))", [StdioTest("1 2", "3")], FAST,
                                 isolation=iso).reason,
                "loop": run_stdio("while True: pass", [StdioTest("", "")], FAST, isolation=iso).reason,
                "call": run_function("def f(a):\\n    a.sort()\\n", "def check(c):\\n    x = [2, 1]\\n    c(x)\\n"
                                     "    assert x == [1, 2]\\n", "f", FAST, isolation=iso).reason}
r = run_stdio("import os\\nprint(sorted(os.listdir('/proc')), os.path.exists(%r))" % os.getcwd(),
              [StdioTest("", "")], FAST)
out["auto"]["sees"] = r.outcomes[0].stdout.strip()
print(json.dumps(out))
"""


def test_an_ordinary_user_gets_the_same_sandbox():
    """Run by a user who is not root (as most are): namespace mode through a user
    namespace where the kernel allows one, else process mode; programs are the OOM
    killer's first choice either way (a supervisor that made itself undumpable first
    could no longer raise its own score), limits and in-place calls hold, and the
    program sees no process but its own and no host folder."""
    py = _world_usable_python()
    if os.getuid() != 0 or py is None:
        pytest.skip("needs root to become another user, and an interpreter that user may run")
    import ast
    import shutil
    import subprocess
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="k15-user-", dir="/tmp"))  # world-readable: the user imports k15rl from here
    try:
        src = Path(__file__).resolve().parents[1] / "k15rl"
        shutil.copytree(src, root / "k15rl", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        r = subprocess.run([py, "-c", AS_A_USER], cwd=root, user=65534, group=65534, extra_groups=[],
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(root)},
                           capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    for iso in ("auto", "process"):
        assert out[iso]["isolation"] in (("namespaces", "process") if iso == "auto" else ("process",))
        assert (out[iso]["oom"], out[iso]["add"], out[iso]["loop"], out[iso]["call"]) == \
            ("pass", "pass", "timeout", "pass"), (iso, out[iso])
    if out["auto"]["isolation"] == "namespaces":  # a user namespace: its own /proc, no host folder
        procs, host = out["auto"]["sees"].rsplit(" ", 1)
        assert host == "False" and len([x for x in ast.literal_eval(procs) if x.isdigit()]) == 1, out["auto"]["sees"]


def test_process_isolation_fallback():
    """Without namespaces: limits, network audit hook and uid cleanup still hold."""
    py = _world_usable_python()
    if py is None:
        pytest.skip("no Python interpreter that another uid may execute on this machine")
    assert run_stdio(ADD, [StdioTest("1 2", "3")], FAST, isolation="process", python=py).reason == "pass"
    assert run_stdio("while True: pass", [StdioTest("", "")], FAST, isolation="process", python=py).reason == "timeout"
    net = run_stdio("import socket\nsocket.socket().connect(('127.0.0.1', 9))", [StdioTest("", "")], FAST,
                    isolation="process", python=py)
    assert net.reason == "runtime_error" and "network access is disabled" in net.detail
    check = "def check(candidate):\n    assert candidate(2, 3) == 5\n"  # the judge runs there too
    for body, reason in (("a + b", "pass"), ("a - b", "wrong_answer")):
        r = run_function(f"def add(a, b):\n    return {body}\n", check, "add", FAST, isolation="process", python=py)
        assert r.reason == reason, r
    # a working folder 3,000 levels deep is removed (shutil.rmtree would fail on it), and
    # the kernel objects that outlive a process are refused there too (seccomp)
    deep = "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('x')\n"
    assert run_stdio(deep, [StdioTest("", "x")], FAST, isolation="process", python=py).reason == "pass"
    assert run_stdio("import os\nprint(os.listdir('.'))", [StdioTest("", "['solution.py']")], FAST, isolation="process",
                     python=py).reason == "pass"
    oom = "print(open('/proc/self/oom_score_adj').read().strip())"  # the OOM killer's first choice
    assert run_stdio(oom, [StdioTest("", "1000")], FAST, isolation="process", python=py).reason == "pass"
    from test_sandbox_hostile import KERNEL_OBJECTS

    r = run_stdio(KERNEL_OBJECTS, [StdioTest("", "0")], FAST, isolation="process", python=py)
    assert r.reason == "pass", r


def _humaneval_check(n: int | None) -> tuple[int, int, int]:
    from k15rl.verifiers.sandbox_pool import grade_all
    from k15rl.tasks.code_humaneval import load_humaneval

    prompts = load_humaneval(limit=n)
    good = grade_all([job_from_spec(p.meta["canonical_solution"], p.meta) for p in prompts], workers=2)
    bad = grade_all([job_from_spec("    return None\n", p.meta) for p in prompts], workers=2)
    return len(prompts), sum(r.reason == "pass" for r in good), sum(r.reason == "pass" for r in bad)


def test_humaneval_loads_and_canonical_solutions_pass():
    n, good, bad = _humaneval_check(12)
    assert (n, good, bad) == (12, 12, 0)


@pytest.mark.slow
def test_humaneval_all_164_canonical_solutions_pass():
    assert _humaneval_check(None) == (164, 164, 0)


def test_plain_data_crosses_to_the_judge_exactly():
    """Return values keep their types (tuple vs list, set, bytes, complex, non-string keys,
    nan/inf, big ints); subclasses of plain types cross as their base type (a Counter as a
    dict, a namedtuple as a tuple: none of their methods cross); other objects do not."""
    import collections
    import enum

    from k15rl.verifiers._sandbox_runner import decode, encode

    value = [1, True, None, 2.5, float("inf"), 10**40, "é\n", b"\x00\xff", (1, (2,)), {3, 4}, frozenset({5}),
             {1: "a", (2, 3): [4]}, 1 + 2j, [], 10**5000]
    assert decode(encode(value)) == value
    assert [type(x) for x in decode(encode(value))] == [type(x) for x in value]
    P = collections.namedtuple("P", "x y")
    E = enum.IntEnum("E", "A B")
    subclassed = [collections.Counter("aab"), P(1, 2), E.B, collections.defaultdict(list, {1: [2]}),
                  type("S", (str,), {"__eq__": lambda s, o: True})("s")]
    back = decode(encode(subclassed))
    assert back == [{"a": 2, "b": 1}, (1, 2), 2, {1: [2]}, "s"]
    assert [type(x) for x in back] == [dict, tuple, int, dict, str]
    for bad in (object(), [lambda: 0], {"k": range(3)}):
        with pytest.raises(TypeError):
            encode(bad)
    check = ("def check(candidate):\n    assert candidate(1) == (1, [1], {1: b'1'})\n"
             "    assert type(candidate(1)[0]) is int\n")
    assert run_function("def f(x):\n    return (x, [x], {x: b'1'})\n", check, "f", FAST).reason == "pass"
    assert run_function("def f(x):\n    return [x, [x], {x: b'1'}]\n", check, "f", FAST).reason == "wrong_answer"


def test_exceptions_reach_the_tests_by_type():
    """A test that expects the program to raise ValueError sees a ValueError; the program's
    AssertionError does not count as the test's own failed assert."""
    check = ("def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        pass\n"
             "    else:\n        raise AssertionError('no ValueError')\n")
    assert run_function("def f(x):\n    if x < 0:\n        raise ValueError(x)\n", check, "f", FAST).reason == "pass"
    assert run_function("def f(x):\n    return x\n", check, "f", FAST).reason == "wrong_answer"
    assert run_function("def f(x):\n    assert False\n", "def check(c):\n    c(1)\n", "f", FAST).reason == "runtime_error"


def test_setup_helpers_come_from_the_dataset_not_the_program():
    """HumanEval-style: the tests call a helper from the problem's header. With the header
    as set-up, a program that redefines the helper to fool the tests fails."""
    setup = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    \"\"\"Undo encode.\"\"\"\n"
    check = "def check(candidate):\n    for s in ('abc', 'xyz'):\n        assert candidate(encode(s)) == s\n"
    honest = setup + "    return s[::-1]\n"
    cheat = "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    assert run_function(honest, check, "decode", FAST, setup=setup).reason == "pass"
    assert run_function(cheat, check, "decode", FAST, setup=setup).reason == "wrong_answer"
    assert run_function(cheat, check, "decode", FAST).reason == "pass"  # without set-up the program's helper is used


def test_a_data_rows_prefix_in_meta_is_the_judges_set_up():
    """A data row's function-call tests (`test_cases: {"test", "entry_point"}`) with the
    problem's header as `prefix` in the row's meta: the judge runs the dataset's helpers,
    so a program that redefines them fails; an honest one passes."""
    prefix = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    \"\"\"Undo encode.\"\"\"\n"
    check = "def check(candidate):\n    for s in ('abc', 'xyz'):\n        assert candidate(encode(s)) == s\n"
    meta = {"test_cases": {"test": check, "entry_point": "decode"}, "prefix": prefix}
    p = Prompt(id="row", messages=(("user", "x"),), answer="", task="code_tests", meta=meta)
    cheat = "```python\ndef encode(s):\n    return s\n\ndef decode(s):\n    return s\n```"
    assert code_reward(cheat, p) == 0.0
    assert code_reward("```python\n    return s[::-1]\n```", p) == 1.0  # a completion of the header


def test_stop_iteration_from_the_program_does_not_end_the_tests_loop():
    """A StopIteration raised into a test's map() would end its loop as if every case had
    passed: it reaches the tests as a RuntimeError."""
    check = "XS = [1, 2, 3]\nYS = [2, 4, 6]\ndef check(candidate):\n    for got, want in zip(map(candidate, XS), YS):\n" \
            "        assert got == want\n"
    assert run_function("def double(x):\n    raise StopIteration\n", check, "double", FAST).reward == 0.0
    assert run_function("def double(x):\n    return 2 * x\n", check, "double", FAST).reason == "pass"


def test_a_sandbox_that_cannot_start_is_a_sandbox_error_and_frees_its_slot(monkeypatch):
    """A supervisor that fails to start (here: a package that is not installed) gives
    sandbox_error with the reason; its uid slot goes back, so later runs still work."""
    from k15rl.verifiers import sandbox

    free = len(sandbox._SLOTS._free)
    outs = sandbox.run_outputs("print(1)", [""], FAST, packages=("no_such_package_k15",))
    assert outs[0].reason == "sandbox_error" and "no_such_package_k15" in outs[0].stderr
    assert len(sandbox._SLOTS._free) == free
    assert run_stdio("print(1)", [StdioTest("", "1")], FAST).reason == "pass"


def test_programs_are_the_oom_killers_first_choice():
    """Programs that together take the machine's memory are killed before the trainer."""
    prog = "print(open('/proc/self/oom_score_adj').read().strip())"
    assert run_stdio(prog, [StdioTest("", "1000")], FAST).reason == "pass"
    assert open("/proc/self/oom_score_adj").read().strip() != "1000"  # not the caller's
