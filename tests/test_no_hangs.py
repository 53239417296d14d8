"""No hangs (docs/reliability.md): a Ray worker killed mid-iteration, a weight sync that
never completes and a reward function that never returns each stop the run within
their time limit with one line naming the worker and the step (exit code 3), and
`k15rl train --resume` finishes the run from its last checkpoint."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from k15rl.cli import main
from k15rl.config import load_config
from k15rl.errors import WORKER_FAILURE_EXIT, UserError
from k15rl.tasks import TASKS

from test_e2e import DigitFirstTask

RELEASE = threading.Event()  # set at the end of a test: the never-returning calls return
HANG = {"after": None, "calls": 0, "first": None}  # never_returns hangs from call number `after` + 1 on


def never_returns(text, prompt):
    """A reward function that, once HANG["after"] calls have been made, never returns."""
    HANG["calls"] += 1
    if HANG["after"] is not None and HANG["calls"] > HANG["after"]:
        HANG["first"] = HANG["first"] or time.monotonic()
        RELEASE.wait()
        return 0.0
    return float(text[:1].isdigit())


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)
    RELEASE.clear()
    HANG.update(after=None, calls=0, first=None)
    yield
    RELEASE.set()


def _args(out, model, *extra):
    return [f"out={out}", f"model.path={model}", "data.tasks=[digit_first]", "data.train_per_level=20",
            "data.test_levels=[1]", "data.test_per_level=2", "iterations=2", "rollout.k=2",
            "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=4", "eval.every=0", "eval.temperature=0",
            "threads=1", "checkpoint_every=1", *extra]


def _error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("k15rl: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _resume_finishes(out, capsys, *overrides):
    assert main(["train", "--resume", str(out), *overrides]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("iter_000001") and summary["iterations"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]


def test_reward_function_that_never_returns_stops_the_run(tmp_path, tiny_model_dir, capsys):
    """From iteration 2 on no call returns: each scores 0 after reward.timeout_s (its slot
    goes to the next call), and reward.stuck_timeout_s after the first one started the
    run stops: exit 3, one line naming the source and the step; the resumed run (reward
    fixed) finishes from the checkpoint of iteration 1."""
    out = tmp_path / "run"
    HANG["after"] = 2 + 4  # the evaluation at the start (2 test prompts), iteration 1 (2 prompts x k=2)
    args = _args(out, tiny_model_dir, f"reward.sources=[digit_first={__name__}:never_returns]",
                 "reward.timeout_s=0.5", "reward.stuck_timeout_s=0.8", "reward.workers=2")
    rc = main(["train", *args])
    failed = time.monotonic()
    err = capsys.readouterr().err
    assert rc == WORKER_FAILURE_EXIT == 3, err
    line = _error_line(err)
    assert re.fullmatch(
        r"k15rl: error: reward function for source 'digit_first' did not return within 0.8 s "
        r"\(reward\.stuck_timeout_s\) at iteration 2 \(reward\); resume with k15rl train --resume "
        + re.escape(str(out)) + r" \(from iter_000001\)", line), line
    assert 0.8 <= failed - HANG["first"] < 2.3  # at the limit, while iteration 2's calls were still waited for
    HANG["after"] = None  # the reward is fixed; the run goes on from its checkpoint
    _resume_finishes(out, capsys)


def test_a_stuck_reward_thread_does_not_keep_the_process_alive(tmp_path):
    """Python waits at exit for ThreadPoolExecutor threads: a reward call that never
    returns must not make the process hang once the run has stopped."""
    script = textwrap.dedent("""
        import threading, time
        from k15rl.errors import WorkerTimeout
        from k15rl.rewards.compose import RewardRouter
        from k15rl.types import Prompt

        def forever(text, prompt):
            threading.Event().wait()

        router = RewardRouter(timeout_s=0.2, stuck_timeout_s=1.5, workers=1, default=forever)
        prompts = [Prompt(f"p{i}", (("user", "q"),), "1", "sort") for i in range(3)]
        outcomes, stats = router.score(["a", "b", "c"], prompts)  # every slot frees at its timeout
        print("timeouts", stats.timeouts, flush=True)
        try:
            router.score(["d"] * 5, prompts[:1] * 5)  # runs past 1.5 s after the first call began
        except WorkerTimeout as e:
            print(e, flush=True)
        print("done", time.monotonic(), flush=True)
    """)
    # A joined stuck thread would never exit: the 120 s timeout fails the test. The time
    # from the script's last line to its exit is what is asserted (CLOCK_MONOTONIC is one
    # clock for all processes), not the import time, which a loaded machine stretches.
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    exited = time.monotonic()
    assert p.returncode == 0, p.stderr
    *lines, done = p.stdout.splitlines()
    assert lines == [
        "timeouts 3", "reward function for source 'sort' did not return within 1.5 s (reward.stuck_timeout_s)"]
    assert exited - float(done.split()[1]) < 10  # it exited once its work was done


def test_timeout_settings_are_checked():
    from k15rl.trainer.resolve import check_names

    with pytest.raises(UserError, match=r"distributed\.timeout_s: must be >= 0"):
        load_config(None, ["distributed.timeout_s=-1"])
    with pytest.raises(UserError, match=r"reward\.stuck_timeout_s: must be 0 \(never\) or >= reward\.timeout_s"):
        check_names(load_config(None, ["reward.timeout_s=60", "reward.stuck_timeout_s=10"]))
    assert load_config(None, []).distributed.timeout_s == 1800 and load_config(None, []).reward.stuck_timeout_s == 600


# Ray: the workers are actors; a subclass defined inside a test travels to them by value.

@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from k15rl.distributed.ray_backend import start_ray

    start_ray(load_config(None, ["distributed.backend=ray", "distributed.num_cpus=4",
                                 "distributed.object_store_mb=256"]), log=lambda s: None)
    yield
    ray.shutdown()


@pytest.mark.slow  # about 20 s: two Ray runs
def test_ray_rollout_worker_killed_mid_iteration(cluster, tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Rollout worker 1's process is killed (SIGKILL) during iteration 2's rollout: the run
    stops at once with one line naming it and the step; the resumed run finishes."""
    from k15rl.distributed import ray_backend

    class DiesInIteration2(ray_backend.RolloutWorker):
        def run(self, queue, params, chunk, budget=0):
            self.runs = getattr(self, "runs", 0) + 1  # 1: the evaluation at the start, 2: iteration 1
            if self.runs == 3 and self.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().run(queue, params, chunk, budget)

    monkeypatch.setattr(ray_backend, "RolloutWorker", DiesInIteration2)
    out = tmp_path / "run"
    rc = main(["train", *_args(out, tiny_model_dir, "distributed.backend=ray", "distributed.timeout_s=60")])
    err = capsys.readouterr().err
    assert rc == 3, err
    line = _error_line(err)
    assert re.fullmatch(r"k15rl: error: rollout worker 1 died during the rollout \(\w*Error\) at iteration 2 "
                        r"\(rollout\); resume with k15rl train --resume " + re.escape(str(out))
                        + r" \(from iter_000001\)", line), line
    monkeypatch.undo()
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)
    _resume_finishes(out, capsys)


def test_ray_weight_sync_that_never_completes(cluster, tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Rollout worker 0 never finishes loading iteration 2's weights: the run stops
    distributed.timeout_s after the sync began, naming the worker and the step."""
    from k15rl.distributed import placement, ray_backend

    class HangsInSync2(ray_backend.RolloutWorker):
        def load_weights(self, state_dict):
            self.syncs = getattr(self, "syncs", 0) + 1
            if self.syncs == 2 and self.rank == 0:
                time.sleep(3600)
            return super().load_weights(state_dict)

    syncs, real_sync = [], placement.Workers.sync_weights

    def timed_sync(self, version):
        if self.version != version:
            syncs.append(time.monotonic())
        return real_sync(self, version)

    monkeypatch.setattr(ray_backend, "RolloutWorker", HangsInSync2)
    monkeypatch.setattr(placement.Workers, "sync_weights", timed_sync)
    out = tmp_path / "run"
    rc = main(["train", *_args(out, tiny_model_dir, "distributed.backend=ray", "distributed.timeout_s=3")])
    failed = time.monotonic()
    err = capsys.readouterr().err
    assert rc == 3, err
    line = _error_line(err)
    assert re.fullmatch(r"k15rl: error: rollout worker 0 did not finish the weight sync within 3 s "
                        r"\(distributed\.timeout_s\) at iteration 2 \(weight sync\); resume with k15rl train "
                        r"--resume " + re.escape(str(out)) + r" \(from iter_000001\)", line), line
    assert len(syncs) == 2 and 3.0 <= failed - syncs[-1] < 6.0  # the limit, plus stopping the workers
    monkeypatch.undo()
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)
    # a checkpoint does not depend on the placement: resumed in one process, which saves
    # a second Ray start here (the killed-worker test above resumes on Ray)
    _resume_finishes(out, capsys, "distributed.backend=local")
