"""Grade many programs in parallel with a bounded number of sandboxes (report §2.6.1:
the code reward model runs beside the trainer).

A `CodeJob` describes one program and its tests in either style; `grade` runs it in the
sandbox; `SandboxPool.submit` returns a `concurrent.futures.Future`, so a caller (the
trainer) can go on while code is graded and collect the results later.

>>> pool = SandboxPool(workers=2, limits=Limits(wall_s=2))
>>> fut = pool.submit(CodeJob("print(int(input()) * 2)", tests=(StdioTest("21", "42"),)))
>>> fut.result().reason
'pass'
>>> pool.close()
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

from k15rl.verifiers.sandbox import FLOAT_TOLERANCE, Limits, RunResult, StdioTest, run_function, run_stdio


@dataclass(frozen=True)
class CodeJob:
    """A program with stdin/stdout `tests`, or with function-call test code `check`
    calling `entry_point` (HumanEval style); `setup` is trusted code (the problem's
    header and helpers) that the tests' process runs first. `float_tolerance`: how far a
    printed real number may be from the expected one (stdio tests; 0: exactly);
    `ignore_case`: whether letter case counts in stdio outputs ("YES" for "Yes"). `cases`:
    how many test cases `check` runs, each with the limits of one (`run_function`)."""

    program: str
    tests: tuple[StdioTest, ...] = ()
    check: str | None = None
    entry_point: str | None = None
    setup: str | None = None
    float_tolerance: float = FLOAT_TOLERANCE
    ignore_case: bool = False
    cases: int = 1


def grade(job: CodeJob, limits: Limits = Limits(), *, isolation: str = "auto") -> RunResult:
    """Run one job in the sandbox."""
    if job.check is not None:
        if not job.entry_point:
            return RunResult("sandbox_error", 0, 1, "function-call tests need an entry_point")
        return run_function(job.program, job.check, job.entry_point, limits, setup=job.setup, cases=job.cases,
                            isolation=isolation)
    return run_stdio(job.program, job.tests, limits, isolation=isolation, float_tolerance=job.float_tolerance,
                     ignore_case=job.ignore_case)


class SandboxPool:
    """At most `workers` sandboxes at a time; each worker thread waits on one sandbox
    process, so threads are enough (the work happens in the child processes)."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), *, isolation: str = "auto"):
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1 (got {self.workers})")
        self.limits = limits
        self.isolation = isolation
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def submit(self, job: CodeJob) -> Future[RunResult]:
        return self._executor.submit(grade, job, self.limits, isolation=self.isolation)

    def map(self, jobs: Iterable[CodeJob]) -> list[RunResult]:
        """Grade all jobs (in parallel) and return their results in order."""
        return [f.result() for f in [self.submit(j) for j in jobs]]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grade_all(jobs: Sequence[CodeJob], workers: int | None = None, limits: Limits = Limits(), *,
              isolation: str = "auto") -> list[RunResult]:
    """Grade `jobs` with a temporary pool."""
    with SandboxPool(workers, limits, isolation=isolation) as pool:
        return pool.map(jobs)
