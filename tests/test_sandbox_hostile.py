"""Hostile programs against the code sandbox (report §2.3.5; docs/code_rewards.md).

Every program must end with reward 0 and the expected reason, leave no process and no
file behind, leave the host's files and this process alone, and a normal program must
pass right after it. Limits are short (1 s CPU, 1.5 s wall) to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from k15rl.verifiers.sandbox import (UID_BASE, Limits, StdioTest, namespace_support, run_function, run_stdio, shutdown,
                                     supervisor_pids)

LIMITS = Limits(cpu_s=1, wall_s=1.5, memory_mb=256, processes=16, file_mb=16, output_kb=64)
ROOT = Path(__file__).resolve().parent.parent
SECRET = "k15-secret-7d1f"
MARKER = "k15-hostile-marker"
HOST_MARKERS = [Path("/tmp") / MARKER, Path("/var/tmp") / MARKER, Path("/dev/shm") / MARKER, ROOT / MARKER,
                Path.home() / MARKER]
CHECK_ADD = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
CHECK_FLOAT = "def check(candidate):\n    assert abs(candidate(1.0) - 0.5) < 1e-6\n"

# (id, style, program, expected reason, expected stdout for stdio programs)
# In stdio programs, the expected output is what the program would print if the attack
# worked: an attack that succeeds passes the test and gets reward 1.
HOSTILE = [
    ("infinite_loop", "stdio", "while True:\n    pass\n", "timeout", "x"),
    ("busy_thread", "stdio",
     "import threading\ndef spin():\n    while True:\n        pass\n"
     "t = threading.Thread(target=spin)\nt.start()\nt.join()\n", "timeout", "x"),
    ("sleep_past_timeout", "stdio", "import time\ntime.sleep(60)\nprint('x')\n", "timeout", "x"),
    ("ignore_sigxcpu", "stdio",
     "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n", "timeout", "x"),
    ("fork_bomb", "stdio", "import os\nwhile True:\n    os.fork()\n", "runtime_error", "x"),
    ("fork_bomb_persistent", "stdio",
     "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", "timeout", "x"),
    ("thread_bomb", "stdio",
     "import threading, time\nfor _ in range(10000):\n    threading.Thread(target=time.sleep, args=(30,)).start()\n",
     "timeout", "x"),  # the limit stops new threads; exit then waits for the sleeping ones
    ("memory_bomb", "stdio", "x = bytearray(2 ** 34)\n", "memory", "x"),
    ("memory_bomb_gradual", "stdio", "xs = []\nwhile True:\n    xs.append(bytearray(10 ** 7))\n", "memory", "x"),
    ("huge_output", "stdio", "while True:\n    print('x' * 1000)\n", "output_limit", "x"),
    ("huge_stderr", "stdio", "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n", "output_limit", "x"),
    ("write_10gb_file", "stdio",
     "with open('big', 'wb') as f:\n    for _ in range(10 * 1024):\n        f.write(b'0' * 2 ** 20)\n",
     "output_limit", "x"),
    ("fill_disk_many_files", "stdio",
     "for i in range(100):\n    open(f'f{i}', 'wb').write(b'0' * 2 ** 20)\n", "runtime_error", "x"),
    ("fill_dev_shm", "stdio", f"open('/dev/shm/{MARKER}', 'wb').write(b'0' * 2 ** 22)\n", "runtime_error", "x"),
    ("delete_project_file", "stdio", f"import os\nos.remove({str(ROOT / 'README.md')!r})\n", "runtime_error", "x"),
    ("read_project_file", "stdio", f"print(open({str(ROOT / 'pyproject.toml')!r}).read())\n", "runtime_error", "x"),
    ("write_etc_passwd", "stdio", "open('/etc/passwd', 'a').write('evil::0:0::/:/bin/sh\\n')\n", "runtime_error", "x"),
    ("write_outside_workdir", "stdio",
     "ok = []\nfor p in " + repr([str(p) for p in HOST_MARKERS]) + ":\n"
     "    try:\n        open(p, 'w').write('x')\n        ok.append(p)\n    except OSError:\n        pass\n"
     "print(len(ok))\n", "wrong_answer", str(len(HOST_MARKERS))),
    ("read_trainer_env", "stdio", "import os\nprint(os.environ.get('K15RL_TEST_SECRET', 'none'))\n", "wrong_answer",
     SECRET),
    ("read_proc_environ", "stdio",
     "import os\nfound = 'none'\nfor p in os.listdir('/proc'):\n    try:\n"
     "        if b'K15RL_TEST_SECRET' in open(f'/proc/{p}/environ', 'rb').read():\n            found = '" + SECRET + "'\n"
     "    except OSError:\n        pass\nprint(found)\n", "wrong_answer", SECRET),
    ("socket_localhost", "stdio",
     "import socket, sys\nport = int(sys.stdin.read())\ns = socket.socket()\ns.settimeout(1)\n"
     "try:\n    s.connect(('127.0.0.1', port))\n    print('connected')\nexcept OSError as e:\n    print(e.errno)\n",
     "wrong_answer", "connected"),
    ("socket_outside", "stdio",
     "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
     "try:\n    s.sendto(b'x', ('8.8.8.8', 53))\n    print('sent')\nexcept OSError as e:\n    print(e.errno)\n",
     "wrong_answer", "sent"),
    ("signal_parent", "stdio",
     "import os, signal, sys\nhost = int(sys.stdin.read())\n"
     "for pid in (os.getppid(), 1, host):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
     "raise SystemExit(3)\n", "runtime_error", "x"),
    # kill(-1) reaches no process the program may signal (the supervisor is PID 1, the
    # zygote and judge run as other uids); it exits 0 having printed nothing
    ("kill_everything", "stdio", "import os, signal\nos.kill(-1, signal.SIGKILL)\n", "wrong_answer", "x"),
    ("raise_rlimits", "stdio",
     "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n",
     "runtime_error", "x"),
    ("unmount_hidden_dir", "stdio",
     "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     f"libc.umount2({str(ROOT).encode()!r}, 2)\nprint(open({str(ROOT / 'README.md')!r}).readline())\n",
     "runtime_error", "x"),
    ("daemon_outlives_run", "stdio",
     "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        time.sleep(30)\n        os._exit(0)\n    os._exit(0)\nprint('parent done')\n", "wrong_answer", "x"),
    ("close_stdout_then_hang", "stdio", "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)\n", "timeout", "x"),
    ("segfault", "stdio", "import ctypes\nctypes.string_at(0)\n", "runtime_error", "x"),
    # function-call style (HumanEval-like): the verdict is the runner's nonce
    ("os_exit_fake_success", "function", "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
     "runtime_error", None),
    ("sys_exit_before_asserts", "function", "import sys\ndef add(a, b):\n    sys.exit(0)\n", "runtime_error", None),
    ("sys_exit_at_import", "function", "import sys\nsys.exit(0)\n", "runtime_error", None),
    ("print_fake_verdict", "function",
     "import os\nprint('pass')\nfor fd in range(3, 10):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n"
     "        pass\nos._exit(0)\n", "runtime_error", None),
    ("patch_builtins_abs", "function",
     "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 123.0\n", "wrong_answer", None),
    ("shadow_builtin_global", "function",
     "def abs(x):\n    return 0\ndef f(x):\n    return 123.0\n", "wrong_answer", None),
    ("always_equal_object", "function",
     "class Eq:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Eq()\n",
     "runtime_error", None),
    ("patch_os_exit_and_write", "function",
     "import os\nos._exit = lambda code: None\nos.write = lambda fd, data: len(data)\ndef add(a, b):\n    return 0\n",
     "wrong_answer", None),
    ("frame_walk_for_nonce", "function",
     "import sys, os\nf = sys._getframe(1)\nos.write(3, f.f_locals['nonce'].encode())\nos._exit(0)\n",
     "runtime_error", None),
    ("gc_scan_for_nonce", "function",
     "import gc, os, re\nfor o in gc.get_objects():\n    if isinstance(o, dict):\n        for v in o.values():\n"
     "            if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):\n                os.write(3, v.encode())\n"
     "os._exit(0)\n", "runtime_error", None),
    ("traceback_frame_for_nonce", "function",
     "import os\ntry:\n    raise ValueError\nexcept ValueError as e:\n    fr = e.__traceback__.tb_frame.f_back\n"
     "    os.write(3, fr.f_locals['nonce'].encode())\n    os._exit(0)\n", "runtime_error", None),
    # ctypes is allowed: nothing in the program's process decides the verdict
    ("ctypes_memory_read", "function", "import ctypes\ndef add(a, b):\n    return a + b + 1\n", "wrong_answer", None),
]
NEEDS_NAMESPACES = {"unmount_hidden_dir", "read_project_file", "delete_project_file", "socket_outside",
                    "socket_localhost", "fill_dev_shm"}


def _processes() -> list[tuple[int, int, str, str]]:
    """(pid, uid, pid namespace, command line) of every process."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append((int(pid), uid, ns, cmd))
    return out


def _sandbox_processes() -> list[str]:
    """Processes a run could have left: any of the sandbox uids, and in each sandbox's
    PID namespace anything but its supervisor and its one pre-started runner (the
    zygote); a program forked from the zygote has its command line, so count them."""
    left, runners = [], {}
    for pid, uid, ns, cmd in _processes():
        if UID_BASE <= uid < UID_BASE + 2048:
            left.append(f"{pid} uid={uid} {cmd[:80]}")
        elif "/.k15/runner.py" in cmd:
            runners.setdefault(ns, []).append(f"{pid} {cmd[:80]}")
    return left + [p for ps in runners.values() if len(ps) > 1 for p in ps]


def _workdirs() -> set[str]:
    return {p for p in os.listdir("/tmp") if p.startswith("k15sbx-")}


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that records whether anything connected."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)
    hits: list[int] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield srv.getsockname()[1], hits
    stop.set()
    th.join()
    srv.close()


@pytest.mark.parametrize("name,style,program,reason,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program(name, style, program, reason, expected, listener, monkeypatch):
    if name in NEEDS_NAMESPACES and not namespace_support()[0]:
        pytest.fail(f"{name} needs namespaces, unavailable here: {namespace_support()[2]}")
    monkeypatch.setenv("K15RL_TEST_SECRET", SECRET)
    port, hits = listener
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    before = _workdirs()
    stdin = {"socket_localhost": str(port), "signal_parent": str(os.getpid())}.get(name, "")
    if style == "stdio":
        result = run_stdio(program, [StdioTest(stdin, expected)], LIMITS)
    else:
        entry, check = ("f", CHECK_FLOAT) if name in ("patch_builtins_abs", "shadow_builtin_global") else ("add", CHECK_ADD)
        result = run_function(program, check, entry, LIMITS)
    assert result.reward == 0.0, result
    assert result.reason == reason, result
    if name == "socket_outside":  # no route: nothing can leave the empty network namespace
        assert result.outcomes[0].stdout.strip() == "101", result  # ENETUNREACH
    assert hits == [], "a sandboxed program reached the host's 127.0.0.1"
    assert (ROOT / "README.md").exists() and (ROOT / "pyproject.toml").exists()
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == passwd
    for m in HOST_MARKERS:
        assert not m.exists(), f"{m} was written from the sandbox"
    assert _sandbox_processes() == []
    assert _workdirs() - before == set()
    # the next run works
    ok = run_stdio("print(sum(map(int, input().split())))", [StdioTest("2 3 4", "9")], LIMITS)
    assert ok.reason == "pass", ok


def test_daemon_gone_later_too():
    """A setsid daemon must not come back or linger a second after the run."""
    prog = HOSTILE[[h[0] for h in HOSTILE].index("daemon_outlives_run")][2]
    run_stdio(prog, [StdioTest("", "x")], LIMITS)
    time.sleep(1.0)
    assert _sandbox_processes() == []


def test_shutdown_leaves_no_process():
    """The pre-started sandboxes and everything in their namespaces end with shutdown()."""
    run_stdio("print(1)", [StdioTest("", "1")], LIMITS)
    assert supervisor_pids()
    shutdown()
    left = [f"{pid} {cmd[:80]}" for pid, uid, _, cmd in _processes()
            if "_sandbox_supervisor" in cmd or "/.k15/runner.py" in cmd or UID_BASE <= uid < UID_BASE + 2048]
    assert left == [] and supervisor_pids() == []


def test_suite_is_large_enough():
    assert len(HOSTILE) >= 25
    assert len({h[0] for h in HOSTILE}) == len(HOSTILE)
