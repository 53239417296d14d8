"""The exceptions that the command line turns into one line on stderr.

`UserError` (exit code 2): bad input. `WorkerFailure` (exit code 3): a fault at run time
that is not the user's input: a worker died, or a step did not finish within its time
limit (docs/reliability.md, "No hangs").
"""

from __future__ import annotations

WORKER_FAILURE_EXIT = 3  # the exit code of `k15rl train` when a WorkerFailure stopped it


class UserError(Exception):
    """Bad input from the user: a config key, a value, a path. The message names it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the message says where, and how to resume (exit code 130)."""


class WorkerFailure(Exception):
    """A worker died or hung. `worker` names it ("rollout worker 1", "trainer worker 0",
    "reward function for source 'gsm8k'"), `problem` says what happened ("died during the
    rollout (ActorDiedError)"). The loop adds where it happened (`located`): the
    iteration, the phase, and how to resume."""

    def __init__(self, worker: str, problem: str):
        super().__init__(worker, problem)
        self.worker, self.problem = worker, problem
        self.where = ""  # " at iteration 3 (weight sync)"
        self.hint = ""  # "; resume with ..."

    def located(self, where: str, hint: str) -> "WorkerFailure":
        if not self.where:
            self.where, self.hint = where, hint
        return self

    def __str__(self) -> str:
        return f"{self.worker} {self.problem}{self.where}{self.hint}"


class WorkerTimeout(WorkerFailure):
    """A worker (or a reward function) that did not finish a step within its time limit."""
