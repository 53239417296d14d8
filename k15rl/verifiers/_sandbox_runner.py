"""Sandbox runner: the first code of the process that runs an untrusted program.

Started by the supervisor as `python -I -S runner.py MODE PROGRAM VERDICT_FD AUDIT SYS_PATH`,
already limited (rlimits) and without privileges. Standard library only.

MODE `stdio`: run PROGRAM as `__main__`; the supervisor and host compare its stdout.
MODE `function`: read {"check", "entry_point", "nonce"} as JSON from stdin, run
PROGRAM, then the test code's `check(candidate)` with pristine builtins and a candidate
whose return values must be plain data (so an object that "equals everything" fails);
only after `check` returns does the runner write the nonce to VERDICT_FD. Exiting early
(`sys.exit(0)`, `os._exit(0)`), printing "passed", or patching `os`/`sys`/builtins does
not produce the nonce. What this cannot stop: a program that searches this process's
memory for the nonce (docs/code_rewards.md says so).
"""

import builtins
import os
import signal
import sys

MEMORY_EXIT = 86
_write, _exit, _type, _isinstance = os.write, os._exit, type, isinstance
_PLAIN = (int, float, complex, str, bytes, bool, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)


def _block_network():
    """Fallback without a network namespace: an audit hook refusing sockets. Weaker than
    a namespace: code that calls the C library directly (ctypes) is not stopped."""

    def hook(event, args):
        if event in ("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo"):
            raise PermissionError(f"network access is disabled in the sandbox ({event})")

    sys.addaudithook(hook)


_INTROSPECTION = ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
                  "gc.get_referrers", "gc.get_referents", "object.__getattr__")


def _block_introspection():
    """Function mode: refuse the ways a program could read the runner's frames or memory
    to find the nonce (frames, the gc's object lists, ctypes, /proc/self/mem). Raises
    ValueError, which the standard library's own uses of sys._getframe tolerate."""

    def hook(event, args):
        if event in _INTROSPECTION:
            raise ValueError(f"{event} is disabled in the sandbox")
        if event == "import" and args[0] in ("ctypes", "_ctypes"):
            raise ValueError("ctypes is disabled in the sandbox")
        if event == "open" and _isinstance(args[0], (str, bytes)) and "/proc/" in str(args[0]):
            raise ValueError("/proc is disabled in the sandbox")

    sys.addaudithook(hook)


def _plain(value, depth=0):
    """`value` if it is built of plain data types (exact types, not subclasses)."""
    t = _type(value)
    if depth > 50:
        raise TypeError("return value nested too deeply")
    if t in _PLAIN:
        return value
    if t in _CONTAINERS:
        items = value.items() if t is dict else value
        for v in items:
            if t is dict:
                _plain(v[0], depth + 1)
                _plain(v[1], depth + 1)
            else:
                _plain(v, depth + 1)
        return value
    raise TypeError(f"the candidate returned a {t.__name__}, not plain data")


def _guard(fn):
    def candidate(*args, **kwargs):
        return _plain(fn(*args, **kwargs))

    return candidate


def main():
    mode, program_path, verdict_fd, audit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if sys.argv[5] != "-":  # read-only folders the program may import from
        sys.path.extend(sys.argv[5].split(os.pathsep))
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # over the file-size limit: killed (output_limit)
    if audit == "audit":
        _block_network()
    with open(program_path) as f:
        source = f.read()
    job = None
    if mode == "function":
        import json

        job = json.loads(sys.stdin.read())
    pristine = dict(builtins.__dict__)
    nonce = job.pop("nonce") if job else None
    if mode == "function":
        import traceback

        _block_introspection()
    sys.argv = ["solution.py"]
    user = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "solution.py", "exec"), user)
        if mode != "function":
            sys.stdout.flush()
            return
        if job["entry_point"] not in user or not callable(user[job["entry_point"]]):
            print(f"the program does not define {job['entry_point']}()", file=sys.stderr)
            _exit(1)
        # The tests see the program's names (HumanEval's tests call its helpers) except
        # any that shadow a builtin, and builtins as they were before the program ran.
        tests = {k: v for k, v in user.items() if k not in pristine}
        tests.update({"__name__": "tests", "__builtins__": dict(pristine)})
        exec(compile(job["check"], "tests.py", "exec"), tests)
        tests["check"](_guard(user[job["entry_point"]]))
    except MemoryError:
        _write(2, b"MemoryError\n")
        _exit(MEMORY_EXIT)
    except AssertionError:
        _write(2, b"AssertionError: a test failed\n")
        _write(verdict_fd, b"fail")
        _exit(1)
    except SystemExit as e:
        if mode == "function":  # exiting before check() returned is not a pass
            _exit(1)
        raise e
    except BaseException as e:
        if mode != "function":
            raise
        try:  # the message only: walking the traceback's frames is refused in this mode
            _write(2, "".join(traceback.format_exception_only(_type(e), e)).encode()[-4000:])
        except MemoryError:
            _exit(MEMORY_EXIT)
        except BaseException:
            pass
        _exit(1)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    _write(verdict_fd, nonce.encode())
    _exit(0)


if __name__ == "__main__":
    main()
