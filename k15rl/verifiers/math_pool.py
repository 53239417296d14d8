"""Mathematical equivalence of two answers within a time and memory limit (report §2.3.5).

`math_equal(gold, pred)` asks a math-verify worker process (`_math_worker.py`) and waits
at most `timeout_s`. A worker that does not answer in time is killed, and the call raises
`TimeoutError` (a reward router scores it 0 and counts it). Workers are kept for the next
call: one per call running at once, so reward threads compare in parallel.

Why processes and not math-verify's own limit: that limit is `signal.alarm`, which works
only in the main thread (rewards are computed in worker threads) and only between Python
bytecodes, while an answer such as 9^{9^{9^9}} keeps sympy inside one C-level power for
ever, holding a thread and its memory, and stops the run at `reward.stuck_timeout_s`.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
from pathlib import Path

TIMEOUT_S = 10.0  # per comparison; typical answers take milliseconds
MEMORY_MB = 2048  # address space of a worker (sympy alone maps about 200 MB)
START_TIMEOUT_S = 120.0  # importing sympy on a busy machine
MAX_IDLE = 8  # workers kept between calls
_WORKER = Path(__file__).with_name("_math_worker.py")


class _Worker:
    """One worker process and its pipes; `ask` sends a request and waits for the line."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(_WORKER), str(MEMORY_MB)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C is the host's
        first = self._line(START_TIMEOUT_S, "start")
        if not first.get("ready"):
            self.kill()
            raise RuntimeError(f"math-verify worker: {first.get('error', first)}")

    def _line(self, timeout: float, what: str) -> dict:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.kill()
                raise TimeoutError(f"math-verify worker did not {what} within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            self.kill()
            raise RuntimeError(f"math-verify worker exited (code {self.proc.wait()}) during {what}")
        return json.loads(line)

    def ask(self, gold: str, pred: str, timeout: float) -> dict:
        self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred, "timeout": timeout}) + "\n").encode())
        self.proc.stdin.flush()
        return self._line(timeout, f"compare {pred[:60]!r} with {gold[:60]!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


_idle: list[_Worker] = []
_lock = threading.Lock()
_pid = os.getpid()  # a forked child starts its own workers, never shares its parent's pipes


def math_equal(gold: str, pred: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True iff math-verify finds `pred` equal to `gold` (LaTeX or plain expressions).

    Raises TimeoutError after `timeout_s` seconds (the worker is killed), RuntimeError when
    no worker starts (math-verify not installed). A worker's start-up is not counted.

    >>> math_equal("a^2-4", "(a+2)(a-2)")
    True
    """
    global _pid
    with _lock:
        if _pid != os.getpid():
            _idle.clear()
            _pid = os.getpid()
        worker = _idle.pop() if _idle else None
    if worker is None or worker.proc.poll() is not None:
        worker = _Worker()
    try:
        reply = worker.ask(gold, pred, timeout_s)
    except BaseException:
        worker.kill()
        raise
    with _lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(worker)
            worker = None
    if worker is not None:
        worker.kill()
    if "error" in reply:
        raise RuntimeError(f"math-verify: {reply['error']}")
    return bool(reply["equal"])


@atexit.register
def shutdown() -> None:
    """Stop the idle workers (each also exits when its stdin closes)."""
    with _lock:
        workers, _idle[:] = list(_idle), []
    for w in workers:
        w.kill()
