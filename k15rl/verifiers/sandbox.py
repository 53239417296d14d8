"""Run untrusted Python programs against test cases (report §2.3.5, RECIPE §7).

Code rewards execute what the policy wrote. Each call starts one supervisor process
(`_sandbox_supervisor.py`, trusted, standard library only) in fresh PID, mount and
network namespaces when `unshare` works on the machine; the supervisor runs the program
once per test case in a runner process (`_sandbox_runner.py`) without privileges and
under resource limits, and kills every process of the namespace after each test.
docs/code_rewards.md states what each protection relies on and what happens where
namespaces are unavailable.

Two test styles:
- stdin/stdout (`run_stdio`): the program reads a test's input and its printed output
  is compared with the expected output, in the supervisor and on the host, never in
  the program's process;
- function call (`run_function`, HumanEval-like): the test code's `check(candidate)`
  runs after the program, in the same process; the verdict is a random nonce that the
  runner writes to a separate pipe only after `check` returns.

Every result carries a reason: pass, wrong_answer, runtime_error, timeout, memory,
output_limit or sandbox_error; the reward is 1 only for pass.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

log = logging.getLogger(__name__)

Reason = Literal["pass", "wrong_answer", "runtime_error", "timeout", "memory", "output_limit", "sandbox_error"]
REASONS: tuple[str, ...] = ("pass", "wrong_answer", "runtime_error", "timeout", "memory", "output_limit",
                            "sandbox_error")
MEMORY_EXIT = 86  # the runner's exit status after a MemoryError
_HERE = Path(__file__).parent
_SUPERVISOR = _HERE / "_sandbox_supervisor.py"
_RUNNER = _HERE / "_sandbox_runner.py"
# uids the runners take when the trainer is root: one per concurrent run, so the
# process-count limit (RLIMIT_NPROC counts per uid) of one run is not shared.
UID_BASE = 61000


@dataclass(frozen=True)
class Limits:
    """Per-test limits. cpu_s is CPU time (all threads), wall_s wall-clock time."""

    cpu_s: float = 2.0
    wall_s: float = 4.0
    memory_mb: int = 256  # address space per process (RLIMIT_AS)
    processes: int = 16  # processes and threads of the runner's uid (RLIMIT_NPROC)
    file_mb: int = 16  # largest file a program may write (RLIMIT_FSIZE)
    output_kb: int = 256  # stdout bytes kept; more is output_limit
    open_files: int = 64
    disk_mb: int = 32  # size of the private /tmp (namespace mode)


@dataclass(frozen=True)
class StdioTest:
    """One stdin/stdout test case."""

    input: str
    output: str


@dataclass
class TestOutcome:
    """What one execution of the program did."""

    reason: Reason
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    returncode: int | None = None


@dataclass
class RunResult:
    """The verdict on a program: the reason of the first failing test, or pass."""

    reason: Reason
    passed: int
    total: int
    detail: str = ""
    isolation: str = ""
    wall_s: float = 0.0
    outcomes: list[TestOutcome] = field(default_factory=list)

    @property
    def reward(self) -> float:
        return 1.0 if self.reason == "pass" else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_output(text: str) -> str:
    """Outputs compare equal up to trailing spaces on lines and blank lines at the ends.

    >>> normalize_output("3 \\n4\\n\\n") == normalize_output("3\\n4")
    True
    """
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


@functools.lru_cache(maxsize=None)
def namespace_support() -> tuple[bool, bool, str]:
    """(usable, needs a user namespace, why not): can this process start a sandbox in
    fresh PID/mount/network namespaces? Tried once per process with `unshare`."""
    exe = shutil.which("unshare")
    if exe is None:
        return False, False, "util-linux unshare not found"
    userns = os.geteuid() != 0
    cmd = [exe, *(["--user", "--map-root-user"] if userns else []), "--net", "--pid", "--fork", "--mount",
           "--mount-proc", "--kill-child", "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, userns, str(e)
    if r.returncode != 0:
        return False, userns, r.stderr.decode(errors="replace").strip()[:200]
    return True, userns, ""


def isolation_mode(isolation: str = "auto") -> str:
    """'namespaces' or 'process' for a requested mode ('auto', 'namespaces', 'process').

    Raises RuntimeError if namespaces are demanded and unavailable."""
    if isolation not in ("auto", "namespaces", "process"):
        raise ValueError(f"isolation must be auto, namespaces or process (got {isolation!r})")
    if isolation == "process":
        return "process"
    ok, _, why = namespace_support()
    if ok:
        return "namespaces"
    if isolation == "namespaces":
        raise RuntimeError(f"sandbox isolation=namespaces is unavailable here: {why}")
    log.warning("sandbox: namespaces unavailable (%s); falling back to process isolation (weaker)", why)
    return "process"


def default_hide_paths() -> list[str]:
    """Folders a program must not see: the project, the caller's home and working
    directory, and the usual homes of users' files."""
    paths = ["/root", "/home", "/var/tmp", "/run", "/mnt", "/media", "/srv", str(Path.home()), os.getcwd(),
             str(_HERE.parent.parent)]
    system = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys", "/tmp", "/sbin"}
    out = []
    for p in paths:
        p = os.path.realpath(p)
        if p not in system and p not in out:
            out.append(p)
    return out


class _Slots:
    """Distinct uids for concurrent runs (used only when the trainer is root)."""

    def __init__(self, n: int = 512):
        # first in, first out: a uid is reused as late as possible, after the kernel
        # has finished tearing down whatever ran under it
        self._free = collections.deque(range(n))
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)

    def acquire(self) -> int:
        with self._cv:
            while not self._free:
                self._cv.wait()
            return self._free.popleft()

    def release(self, slot: int) -> None:
        with self._cv:
            self._free.append(slot)
            self._cv.notify()


_SLOTS = _Slots()


def _execute(program: str, mode: str, runs: list[dict], limits: Limits, *, isolation: str,
             stop_at_first_failure: bool, python: str | None,
             sys_path: Sequence[str] = ()) -> tuple[list[dict], str, str | None]:
    """Start one supervisor for all runs. Returns (raw results, isolation, error)."""
    mode_iso = isolation_mode(isolation)
    ns = mode_iso == "namespaces"
    _, userns, _ = namespace_support() if ns else (False, False, "")
    slot = _SLOTS.acquire()
    workdir = tempfile.mkdtemp(prefix="k15sbx-")
    nonce = secrets.token_hex(16)
    job = {
        "nonce": nonce, "mode": mode, "program": program, "runs": runs, "limits": asdict(limits),
        "namespaces": ns, "userns": userns, "uid": UID_BASE + slot, "workdir": workdir,
        "python": python or sys._base_executable, "keep_paths": [sys.base_prefix, *sys_path],
        "sys_path": list(sys_path),
        "hide_paths": default_hide_paths(), "disk_mb": limits.disk_mb,
        "runner_source": _RUNNER.read_text(), "stop_at_first_failure": stop_at_first_failure,
    }
    cmd = [python or sys._base_executable, "-I", "-S", str(_SUPERVISOR)]
    if ns:
        cmd = [shutil.which("unshare"), *(["--user", "--map-root-user"] if userns else []), "--net", "--pid",
               "--fork", "--mount", "--mount-proc", "--kill-child", *cmd]
    outer = len(runs) * (limits.wall_s + 1.0) + 10.0
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True, env=env, cwd="/")
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=outer)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return [], mode_iso, f"the supervisor did not finish within {outer:.0f} s"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _SLOTS.release(slot)
    lines = [ln for ln in out.decode(errors="replace").splitlines() if nonce in ln]
    if not lines:
        return [], mode_iso, f"no result from the supervisor (exit {proc.returncode}): {err.decode(errors='replace')[-300:]}"
    try:
        res = json.loads(lines[-1])
    except json.JSONDecodeError:
        return [], mode_iso, "malformed result from the supervisor"
    if res.get("nonce") != nonce:
        return [], mode_iso, "result without the supervisor's nonce"
    for note in res.get("notes", []):
        log.debug("sandbox: %s", note)
    return res["results"], mode_iso, res.get("error")


def _classify(raw: dict, limits: Limits) -> Reason:
    """The reason of one execution, from how the runner ended (not from its output)."""
    rc = raw["returncode"]
    if raw["output_exceeded"] or rc == -signal.SIGXFSZ:
        return "output_limit"
    # SIGXCPU comes from the soft CPU limit; SIGKILL from the hard one (a second later), or
    # from the program itself: then its CPU time is far below the limit.
    over_cpu = rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and raw["cpu_s"] >= int(limits.cpu_s + 0.999) - 0.05)
    if raw["timed_out"] or over_cpu:
        return "timeout"
    if rc == MEMORY_EXIT:
        return "memory"
    if rc != 0:
        return "runtime_error"
    return "pass"


def run_stdio(program: str, tests: Sequence[StdioTest], limits: Limits = Limits(), *, isolation: str = "auto",
              stop_at_first_failure: bool = True, python: str | None = None) -> RunResult:
    """Run `program` once per test with the test's input on stdin; pass if every
    output matches (up to `normalize_output`)."""
    t0 = time.monotonic()
    if not tests:
        return RunResult("sandbox_error", 0, 0, "no test cases")
    runs = [{"stdin": t.input, "expected": t.output} for t in tests]
    raw, iso, error = _execute(program, "stdio", runs, limits, isolation=isolation,
                               stop_at_first_failure=stop_at_first_failure, python=python)
    outcomes = []
    passed = 0
    first: tuple[Reason, str] | None = None
    for i, (r, t) in enumerate(zip(raw, tests)):
        if "error" in r:
            error = r["error"]
            break
        reason = _classify(r, limits)
        if reason == "pass" and normalize_output(r["stdout"]) != normalize_output(t.output):
            reason = "wrong_answer"
        outcomes.append(TestOutcome(reason, r["stdout"], r["stderr"], r["wall_s"], r["returncode"]))
        if reason == "pass":
            passed += 1
        elif first is None:
            first = (reason, f"test {i}: {reason}; stderr: {r['stderr'][-300:]}")
    wall = time.monotonic() - t0
    if error and first is None:
        return RunResult("sandbox_error", passed, len(tests), error, iso, wall, outcomes)
    if first is not None:
        return RunResult(first[0], passed, len(tests), first[1], iso, wall, outcomes)
    if passed < len(tests):
        return RunResult("sandbox_error", passed, len(tests), "not every test ran", iso, wall, outcomes)
    return RunResult("pass", passed, len(tests), "", iso, wall, outcomes)


def run_outputs(program: str, inputs: Sequence[str], limits: Limits = Limits(), *, isolation: str = "auto",
                python: str | None = None, sys_path: Sequence[str] = ()) -> list[TestOutcome]:
    """Run `program` on every input and return what it printed (no expected output):
    used to compare reference solutions when validating generated tests (report §2.3.5).
    `sys_path`: folders (read-only) the program may import from, e.g. cyaron's."""
    if not inputs:
        return []
    raw, _, error = _execute(program, "stdio", [{"stdin": x} for x in inputs], limits, isolation=isolation,
                             stop_at_first_failure=False, python=python, sys_path=sys_path)
    out = [TestOutcome(_classify(r, limits), r["stdout"], r["stderr"], r["wall_s"], r["returncode"])
           if "error" not in r else TestOutcome("sandbox_error", stderr=r["error"]) for r in raw]
    out += [TestOutcome("sandbox_error", stderr=error or "not run")] * (len(inputs) - len(out))
    return out


def run_function(program: str, check: str, entry_point: str, limits: Limits = Limits(), *,
                 isolation: str = "auto", python: str | None = None) -> RunResult:
    """Run `program`, then the test code's `check(candidate)` with `candidate` the
    program's `entry_point` (HumanEval style). Pass only if the runner reports the
    nonce, which it writes after `check` returned."""
    t0 = time.monotonic()
    nonce = secrets.token_hex(16)
    runs = [{"stdin": json.dumps({"check": check, "entry_point": entry_point, "nonce": nonce}), "verdict": True}]
    raw, iso, error = _execute(program, "function", runs, limits, isolation=isolation,
                               stop_at_first_failure=True, python=python)
    wall = time.monotonic() - t0
    if not raw or "error" in raw[0]:
        return RunResult("sandbox_error", 0, 1, error or (raw[0]["error"] if raw else "not run"), iso, wall)
    r = raw[0]
    reason = _classify(r, limits)
    if reason == "pass" and r["verdict"] != nonce:
        reason = "runtime_error"  # exited 0 without the checks finishing
    if r["verdict"] == "fail" and reason == "runtime_error":
        reason = "wrong_answer"
    outcome = TestOutcome(reason, r["stdout"], r["stderr"], r["wall_s"], r["returncode"])
    detail = "" if reason == "pass" else f"{reason}; stderr: {r['stderr'][-300:]}"
    return RunResult(reason, int(reason == "pass"), 1, detail, iso, wall, [outcome])
