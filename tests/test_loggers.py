"""TensorBoard and W&B loggers beside metrics.jsonl (k15rl/trainer/loggers.py), offline."""

import json
import math
import sys
import types

import pytest

from k15rl.config import load_config
from k15rl.errors import UserError
from k15rl.tasks import TASKS
from k15rl.trainer.loggers import eval_scalars, metric_scalars
from k15rl.trainer.loop import train

from test_e2e import DigitFirstTask


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)


def _cfg(out, model, *extra):
    return load_config(None, [
        f"out={out}", f"model.path={model}", "data.tasks=[digit_first]", "data.train_per_level=10",
        "data.test_per_level=2", "iterations=2", "rollout.k=2", "rollout.prompts_per_iteration=2",
        "rollout.max_new_tokens=2", "eval.every=1", "threads=1", *extra,
    ])


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)  # float32 events


def test_tensorboard_holds_every_metric_eval_and_the_config(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(_cfg(out, tiny_model_dir, "log.tensorboard=true"), log=lambda s: None)
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    metrics = _rows(out / "metrics.jsonl")
    for row in metrics:
        for key, value in metric_scalars(row).items():
            events = [e for e in ea.Scalars(key) if e.step == row["iteration"]]
            assert len(events) == 1 and _same(events[0].value, value), (key, row["iteration"])
    assert {"reward/accuracy", "loss/policy", "time/iteration"} <= tags
    evals = _rows(out / "eval.jsonl")
    for row in evals:
        for key, value in eval_scalars(row, 1.0).items():
            assert [e.value for e in ea.Scalars(key) if e.step == row["iteration"]] == [pytest.approx(value)]
    assert {"eval/accuracy", "eval/accuracy_ci95", "eval/mean_tokens", "eval/level_1/accuracy",
            "eval_greedy/accuracy"} <= tags
    assert [e.step for e in ea.Scalars("eval/accuracy")] == [0, 1, 2]
    assert [e.step for e in ea.Scalars("eval_greedy/accuracy")] == [0, 2]
    (text,) = ea.Tensors("config/text_summary")
    assert "```yaml" in text.tensor_proto.string_val[0].decode() and "tensorboard: true" in \
        text.tensor_proto.string_val[0].decode()


class FakeRun:
    def __init__(self, calls):
        self.calls = calls

    def define_metric(self, *a, **kw):
        self.calls.append(("define_metric", a, kw))

    def log(self, row):
        self.calls.append(("log", row))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_receives_every_row_and_finishes(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun(calls))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    train(_cfg(out, tiny_model_dir, "log.wandb=true", "log.wandb_project=p"), log=lambda s: None)
    (init,) = [c[1] for c in calls if c[0] == "init"]
    assert init["project"] == "p" and init["name"] == "run" and init["mode"] == "offline"
    assert init["dir"] == str(out) and init["config"]["log"]["wandb"] is True and init["resume"] == "allow"
    assert init["id"] == (out / "wandb_id").read_text().strip()
    logged = [c[1] for c in calls if c[0] == "log"]
    metrics = [r for r in logged if "reward/accuracy" in r]
    assert metrics == [{"iteration": r["iteration"], **metric_scalars(r)} for r in _rows(out / "metrics.jsonl")]
    assert len([r for r in logged if "eval/accuracy" in r]) == 3
    assert len([r for r in logged if "eval_greedy/accuracy" in r]) == 2
    assert calls[-1] == ("finish",)


@pytest.mark.parametrize("key,package", [("log.tensorboard", "tensorboard"), ("log.wandb", "wandb")])
def test_a_missing_package_is_one_line_before_the_folder_is_touched(tmp_path, tiny_model_dir, monkeypatch,
                                                                    key, package):
    monkeypatch.setitem(sys.modules, package, None)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=rf"{key}=true needs the {package} package: pip install 'k15rl\[{package}\]'"):
        train(_cfg(out, tiny_model_dir, f"{key}=true"), log=lambda s: None)
    assert not out.exists()


def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_model_dir, crash_then_resume):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, extra = tmp_path / "run", ("log.tensorboard=true", "iterations=4", "checkpoint_every=2")
    # iteration 3 is logged after the checkpoint of 2, then 4 crashes
    crash_then_resume(_cfg(out, tiny_model_dir, *extra), 4, error=KeyboardInterrupt)
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    metrics = _rows(out / "metrics.jsonl")
    assert [e.step for e in ea.Scalars("reward/mean")] == [1, 2, 3, 4]
    assert all(_same(e.value, m["reward/mean"]) for e, m in zip(ea.Scalars("reward/mean"), metrics))
    assert [e.step for e in ea.Scalars("eval/accuracy")] == [0, 1, 2, 3, 4]


def test_saved_eval_responses_are_the_evaluations_and_survive_a_resume(tmp_path, tiny_model_dir, crash_then_resume):
    """eval.save_responses: one file per evaluation, one row per sample; each file's
    accuracy and mean tokens are its eval.jsonl row's. A resumed run re-evaluates what
    came after its checkpoint and leaves no file of the interrupted run behind."""
    out = tmp_path / "run"
    cfg = _cfg(out, tiny_model_dir, "eval.save_responses=true", "iterations=4", "checkpoint_every=2",
               "eval.samples_per_prompt=2")
    stale = out / "eval_responses" / "iter9_T1.jsonl"  # as if evaluated after the checkpoint, never again
    crash_then_resume(cfg, 4, before_resume=lambda: stale.write_text("{}\n"))
    files = sorted(p.name for p in (out / "eval_responses").iterdir())
    assert files == sorted([f"iter{i}_T1.jsonl" for i in range(5)] + ["iter0_T0.jsonl", "iter4_T0.jsonl"])
    for ev in _rows(out / "eval.jsonl"):
        rows = _rows(out / "eval_responses" / f"iter{ev['iteration']}_T{ev['temperature']:g}.jsonl")
        assert len(rows) == ev["n"] and ev["n"] % 2 == 0  # test prompts x 2 samples
        assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(ev["accuracy"])
        assert sum(r["tokens"] for r in rows) / len(rows) == pytest.approx(ev["mean_tokens"])
        assert [r["sample"] for r in rows] == [0, 1] * (len(rows) // 2) and {r["task"] for r in rows} == {"digit_first"}
        assert all(r["question"].startswith("Say a number") and r["answer"] == "" and r["images"] == 0 for r in rows)
