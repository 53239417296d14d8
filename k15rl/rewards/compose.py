"""Reward functions chosen per data source, run in parallel with time limits
(report §2.3.5, §2.6.1: math, code and judge rewards side by side).

A reward function takes the response text and its prompt and returns a number in
[0, 1]: `(text: str, prompt: Prompt) -> float`. A *batched* one (an attribute
`batched = True`) takes lists and returns a list: the judge model grades a whole batch
in one generate call.

The router is made from a `RewardConfig` by `router_from_config` (the trainer's resolve.py),
which resolves `reward.judge_model` ("builtin" is built by the trainer's warm-up).

`reward.sources` in the config maps a data source (the prompt's `meta["source"]`, else
its task name) to a reward, by name:
- a built-in reward: `code_tests` (run the program against the prompt's tests in the
  sandbox), `judge` (the chain-of-thought judge model, `reward.judge_model`);
- a verifier (`math`, `integer`, ...) or a task name (`sort`, `code`, ...), applied to
  the prompt's answer;
- a user function `package.module:function`.
A source without an entry uses its task's own verifier, as before.

An exception or a timeout scores 0, is counted and logged, and the rest goes on; a
call that never returns (still running after `reward.stuck_timeout_s`) stops the run
with `WorkerTimeout` (docs/reliability.md, "No hangs").
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from k15rl.errors import UserError, WorkerTimeout
from k15rl.rewards.lookup import verifier_for, verifier_names
from k15rl.types import Prompt

log = logging.getLogger(__name__)
RewardFn = Callable[[str, Prompt], float]


def _code_tests(text: str, prompt: Prompt) -> float:
    from k15rl.verifiers.code import code_reward

    return code_reward(text, prompt)


# Rewards that need the whole prompt (its meta), not only the answer string.
PROMPT_REWARDS: dict[str, RewardFn] = {"code_tests": _code_tests, "code": _code_tests, "humaneval": _code_tests}


def _from_verifier(name: str) -> RewardFn:
    verify = verifier_for(name)

    def reward(text: str, prompt: Prompt) -> float:
        return float(bool(verify(text, prompt.answer)))

    reward.__name__ = f"verifier:{name}"
    return reward


def resolve_reward(spec: str, *, judge_model: str | None = None, key: str = "reward.sources",
                   judge_device: str = "cpu") -> RewardFn:
    """The reward function a config names. Raises UserError naming `key` and `spec`.
    `judge_model` is the judge's model folder, resolved by the caller; it is loaded, on
    `judge_device` (reward.judge_device), only when the judge is first called."""
    if spec in PROMPT_REWARDS:
        return PROMPT_REWARDS[spec]
    if spec == "judge":
        if not judge_model:
            raise UserError(f"config key {key}: 'judge' needs reward.judge_model (a model folder or a built-in model's name: 'builtin', ...)")
        from k15rl.rewards.judge import judge_reward

        return judge_reward(judge_model, device=judge_device)
    if ":" in spec:
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise UserError(f"config key {key}: cannot load {spec!r} ({type(e).__name__}: {e})") from None
        if not callable(fn):
            raise UserError(f"config key {key}: {spec!r} is not callable")
        return fn
    try:
        return _from_verifier(spec)
    except ValueError:
        known = sorted({*PROMPT_REWARDS, "judge", *verifier_names()})
        raise UserError(f"config key {key}: unknown reward {spec!r} (known: {', '.join(known)}, "
                        "or package.module:function)") from None


def parse_sources(entries: Sequence[str], key: str = "reward.sources") -> dict[str, str]:
    """`["gsm8k=math", "apps=code_tests"]` -> {"gsm8k": "math", "apps": "code_tests"}.

    >>> parse_sources(["a=math", "b=pkg.mod:fn"])
    {'a': 'math', 'b': 'pkg.mod:fn'}
    """
    out: dict[str, str] = {}
    for i, e in enumerate(entries):
        source, sep, reward = e.partition("=")
        if not sep or not source.strip() or not reward.strip():
            raise UserError(f"config key {key}[{i}]: expected 'source=reward', got {e!r}")
        if source.strip() in out:
            raise UserError(f"config key {key}[{i}]: source {source.strip()!r} given twice")
        out[source.strip()] = reward.strip()
    return out


@dataclass
class RewardStats:
    """What happened while scoring one batch."""

    errors: int = 0
    timeouts: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    no_verdict: int = 0  # the judge's outputs that held no verdict (scored 0: `JudgeScores.no_verdict`)


@dataclass
class RewardOutcome:
    value: float
    status: str  # ok | error | timeout
    message: str = ""


def source_of(prompt: Prompt) -> str:
    """The data source a prompt came from: `meta["source"]`, else its task name."""
    return str(prompt.meta.get("source") or prompt.task)


class _Call:
    """One reward call on its own daemon thread (a call that never returns cannot keep
    the process from exiting); `done` is set when it returns or raises."""

    def __init__(self, call: Callable[[], Any], source: str, wake: threading.Event, rounds: int = 1):
        self.call, self.source, self.wake = call, source, wake
        self.rounds = rounds  # rounds of responses it scores: its limits are per round (a batched reward's)
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        threading.Thread(target=self._run, name=f"reward:{source}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.value = self.call()
        except BaseException as e:  # a broken reward must not stop training
            self.error = e
        finally:
            self.done.set()
            self.wake.set()


class RewardRouter:
    """Picks each prompt's reward function by source and runs them, `workers` at a time,
    each call within `timeout_s` seconds (None: no limit). A batched reward (the judge)
    scores a source's whole batch in one call: with `parallel` (responses it scores at
    once) its limits are per round of that many, and its `prepare` (the judge's model load)
    runs before its clock starts.

    A call past `timeout_s` scores 0 and gives its slot to the next call; it keeps its
    (daemon) thread until it returns, because Python cannot stop a thread. One still
    running `stuck_timeout_s` after it started never returns: `score` raises
    `WorkerTimeout` naming its source (checked while any batch is scored, so the run
    stops at its next reward step; the loop adds the iteration). Code runs in sandbox
    processes with their own limits, so only user functions can hold a thread that long.
    """

    def __init__(self, sources: dict[str, str] | None = None, *, timeout_s: float | None = 60.0, workers: int = 2,
                 judge_model: str | None = None, default: RewardFn | None = None, judge_device: str = "cpu",
                 stuck_timeout_s: float | None = 600.0):
        if workers < 1:
            raise UserError(f"config key reward.workers: must be >= 1 (got {workers})")
        if timeout_s is not None and timeout_s <= 0:
            raise UserError(f"config key reward.timeout_s: must be > 0 (got {timeout_s})")
        if stuck_timeout_s is not None and stuck_timeout_s <= 0:
            raise UserError(f"config key reward.stuck_timeout_s: must be > 0 (got {stuck_timeout_s})")
        self.timeout_s = timeout_s
        self.stuck_timeout_s = stuck_timeout_s
        self.workers = workers
        self.judge_model = judge_model
        self.sources = dict(sources or {})
        self._fns: dict[str, RewardFn] = {src: resolve_reward(spec, judge_model=judge_model, judge_device=judge_device)
                                          for src, spec in self.sources.items()}
        self.default = default  # a source without an entry: this function (a Python caller's), else its task's
        self._lock = threading.Lock()
        self._abandoned: list[_Call] = []  # timed-out calls that have not returned yet

    def fn_for(self, prompt: Prompt) -> RewardFn:
        src = source_of(prompt)
        with self._lock:
            if src in self._fns:
                return self._fns[src]
            if prompt.task in self._fns:
                return self._fns[prompt.task]
            if self.default is not None:
                return self.default
            fn = PROMPT_REWARDS.get(prompt.task) or _from_verifier(prompt.task)
            self._fns[prompt.task] = fn
            return fn

    def score(self, texts: Sequence[str], prompts: Sequence[Prompt]) -> tuple[list[RewardOutcome], RewardStats]:
        """One outcome per (text, prompt), in order. Raises WorkerTimeout when a call has
        run `stuck_timeout_s` (this batch's or an earlier one's)."""
        stats = RewardStats()
        fns = [self.fn_for(p) for p in prompts]
        outcomes: list[RewardOutcome | None] = [None] * len(texts)
        jobs: list[tuple[list[int], Callable[[], Any]]] = []
        batched: dict[int, list[int]] = {}
        for i, fn in enumerate(fns):
            if getattr(fn, "batched", False):
                batched.setdefault(id(fn), []).append(i)
            else:
                jobs.append(([i], lambda fn=fn, i=i: fn(texts[i], prompts[i])))
        for idxs in batched.values():
            fn = fns[idxs[0]]
            getattr(fn, "prepare", lambda: None)()  # e.g. the judge loads its model, outside the time limit
            jobs.append((idxs, lambda fn=fn, idxs=idxs: fn([texts[i] for i in idxs], [prompts[i] for i in idxs])))
        # a batched reward that scores `parallel` responses at once (the judge: its engine's
        # slots) takes ceil(n / parallel) rounds for n: its limits are per round; one without
        # `parallel` scores its batch in one round
        rounds = [-(-len(idxs) // max(1, getattr(fns[idxs[0]], "parallel", len(idxs)))) for idxs, _ in jobs]
        wake = threading.Event()
        waiting, live = list(range(len(jobs)))[::-1], {}  # job -> its running _Call
        while waiting or live:
            while waiting and len(live) < self.workers:  # the clock of a call starts when it does
                j = waiting.pop()
                live[j] = _Call(jobs[j][1], source_of(prompts[jobs[j][0][0]]), wake, rounds[j])
            wake.clear()
            now = time.monotonic()
            for j, call in list(live.items()):
                if call.done.is_set():
                    result = (call.value, "ok", "") if call.error is None else \
                        (None, "error", f"{type(call.error).__name__}: {call.error}")
                elif self.timeout_s is not None and now >= call.started + self.timeout_s * call.rounds:
                    self._abandoned.append(call)
                    result = (None, "timeout", f"no result within {self.timeout_s * call.rounds:g} s")
                else:
                    continue
                del live[j]
                self._record(jobs[j][0], fns, prompts, result, outcomes, stats)
            self._check_stuck([*live.values(), *self._abandoned], now)
            if live and not any(c.done.is_set() for c in live.values()):
                wake.wait(self._next_deadline(live.values(), now))
        self._check_stuck(self._abandoned, time.monotonic())
        return [o for o in outcomes if o is not None], stats

    def _record(self, idxs: list[int], fns: list[RewardFn], prompts: Sequence[Prompt], result: tuple[Any, str, str],
                outcomes: list, stats: RewardStats) -> None:
        values, status, msg = result
        if getattr(fns[idxs[0]], "batched", False):
            if status == "ok" and (not isinstance(values, (list, tuple)) or len(values) != len(idxs)):
                values, status, msg = None, "error", f"batched reward returned {type(values).__name__}"
            vals = list(values) if status == "ok" else [0.0] * len(idxs)
            if status == "ok":  # the judge's scores of this call say how many held no verdict
                stats.no_verdict += getattr(values, "no_verdict", 0)
        else:
            vals = [values if status == "ok" else 0.0]
        for i, v in zip(idxs, vals):
            outcomes[i] = self._check_value(v, status, msg, prompts[i], stats)

    def _next_deadline(self, live, now: float) -> float | None:
        """Seconds until the next call reaches its time limit or its stuck limit."""
        limits = [c.started + self.timeout_s * c.rounds for c in live if self.timeout_s is not None]
        if self.stuck_timeout_s is not None:
            limits += [c.started + self.stuck_timeout_s * c.rounds for c in [*live, *self._abandoned]
                       if not c.done.is_set()]
        return max(min(limits) - now, 0.001) if limits else None

    def _check_stuck(self, calls, now: float) -> None:
        self._abandoned = [c for c in self._abandoned if not c.done.is_set()]
        if self.stuck_timeout_s is None:
            return
        for c in calls:
            if not c.done.is_set() and now >= c.started + self.stuck_timeout_s * c.rounds:
                per = f" x {c.rounds} rounds of its batch" if c.rounds > 1 else ""
                raise WorkerTimeout(f"reward function for source {c.source!r}",
                                    f"did not return within {self.stuck_timeout_s * c.rounds:g} s "
                                    f"(reward.stuck_timeout_s{per})")

    def _check_value(self, v: Any, status: str, msg: str, prompt: Prompt, stats: RewardStats) -> RewardOutcome:
        if status == "ok":
            try:
                v = float(v)
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"reward {v} outside [0, 1]")
                return RewardOutcome(v, "ok")
            except (TypeError, ValueError) as e:
                status, msg = "error", f"{type(e).__name__}: {e}"
        src = source_of(prompt)
        stats.by_source[src] = stats.by_source.get(src, 0) + 1
        if status == "timeout":
            stats.timeouts += 1
        else:
            stats.errors += 1
        log.warning("reward for %s (source %s) scored 0: %s %s", prompt.id, src, status, msg)
        return RewardOutcome(0.0, status, msg)


def check_reward_config(reward_cfg: Any) -> None:
    """Validate the fields of a `RewardConfig`; raises UserError naming the key. A judge
    model folder is checked here, before a run touches anything; a built-in model's name
    ("builtin", "builtin-long", ...) is built later, when the router is made
    (`router_from_config` in the trainer's resolve.py)."""
    specs = parse_sources(reward_cfg.sources).values()
    for i, spec in enumerate(specs):
        resolve_reward(spec, judge_model=reward_cfg.judge_model, key=f"reward.sources[{i}]")
    from k15rl.models.builtin import BUILTIN_SPECS

    if "judge" in specs and reward_cfg.judge_model not in BUILTIN_SPECS:
        from k15rl.models.loading import check_model_folder

        check_model_folder(reward_cfg.judge_model, "reward.judge_model")
    if "judge" in specs:  # a device this machine lacks: refused now, not at the first reward step
        from k15rl.models.loading import check_device

        check_device(reward_cfg.judge_device, "config key reward.judge_device")
    if reward_cfg.workers < 1:
        raise UserError(f"config key reward.workers: must be >= 1 (got {reward_cfg.workers})")
    if reward_cfg.timeout_s < 0:
        raise UserError(f"config key reward.timeout_s: must be >= 0 (0 = no limit) (got {reward_cfg.timeout_s})")
    stuck = reward_cfg.stuck_timeout_s
    if stuck < 0 or (stuck and reward_cfg.timeout_s and stuck < reward_cfg.timeout_s):
        raise UserError(f"config key reward.stuck_timeout_s: must be 0 (never) or >= reward.timeout_s "
                        f"({reward_cfg.timeout_s:g}) (got {stuck!r})")
