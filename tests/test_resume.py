"""Checkpoints and resume: a run interrupted at any iteration and resumed ends exactly
like an uninterrupted one; NaN steps are skipped and counted; torn writes are ignored."""

import json

import pytest
import torch
from safetensors.torch import load_file

from k15rl.algorithms import LOSSES
from k15rl.cli import main
from k15rl.config import load_config
from k15rl.errors import UserError
from k15rl.tasks import TASKS
from k15rl.trainer.checkpoint import latest_checkpoint, truncate_jsonl
from k15rl.trainer.loop import train

from test_e2e import DigitFirstTask


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)


def _cfg(out, model, *extra):
    return load_config(None, [
        f"out={out}", f"model.path={model}", "data.tasks=[digit_first]", "data.train_per_level=20",
        "data.test_per_level=4", "iterations=6", "rollout.k=4", "rollout.prompts_per_iteration=4",
        "rollout.max_new_tokens=6", "rollout.segment_tokens=2", "sampler.name=prioritized", "algorithm.lr=0.01",
        "algorithm.tau=0.01", "eval.every=3", "threads=1", "checkpoint_every=1", "checkpoint_keep=2", *extra,
    ])


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _at(cfg, crash_at: int):
    """A check, before resuming, that the run died with its last checkpoint just before `crash_at`."""
    def check():
        assert latest_checkpoint(cfg.out).name == f"iter_{crash_at - 1:06d}"
    return check


@pytest.mark.parametrize("crash_at", [2, 5])
def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_model_dir, crash_then_resume, crash_at):
    ref = tmp_path / "ref"
    train(_cfg(ref, tiny_model_dir), log=lambda s: None)

    run = tmp_path / "run"
    cfg = _cfg(run, tiny_model_dir)
    summary = crash_then_resume(cfg, crash_at, _at(cfg, crash_at))
    assert summary["resumed_from"].endswith(f"iter_{crash_at - 1:06d}")

    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = _metrics(ref), _metrics(run)
    assert [m["iteration"] for m in mb] == [1, 2, 3, 4, 5, 6]  # none lost, none twice
    for x, y in zip(ma, mb):
        assert {k: v for k, v in x.items() if not k.startswith(("time/", "rollout/tokens_per_s"))} == \
            {k: v for k, v in y.items() if not k.startswith(("time/", "rollout/tokens_per_s"))}
    ea = [(e["iteration"], e["temperature"], e["accuracy"]) for e in map(json.loads, (ref / "eval.jsonl").open())]
    eb = [(e["iteration"], e["temperature"], e["accuracy"]) for e in map(json.loads, (run / "eval.jsonl").open())]
    assert ea == eb
    kept = sorted(p.name for p in (run / "checkpoints").glob("iter_*"))
    assert kept == ["iter_000005", "iter_000006"]  # checkpoint_keep=2
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_000006"


def test_torn_checkpoint_is_ignored(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    train(_cfg(run, tiny_model_dir, "iterations=2", "checkpoint_keep=0"), log=lambda s: None)
    ck = run / "checkpoints"
    (ck / ".iter_000003.tmp-abc").mkdir()  # a write that was killed before its rename
    (ck / "iter_000009").mkdir()  # a folder without state.json is not complete
    (ck / "latest").write_text("iter_000009\n")  # pointing at it does not make it so
    assert latest_checkpoint(run).name == "iter_000002"


def test_truncate_jsonl_drops_rows_after_the_checkpoint_and_torn_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n{"itera')
    truncate_jsonl(p, 2)
    assert p.read_text() == '{"iteration": 1}\n{"iteration": 2}\n'
    truncate_jsonl(p, 5)
    assert p.read_text() == '{"iteration": 1}\n{"iteration": 2}\n'


def _nan_loss_after(n_good):
    calls = []
    real = LOSSES["k15"]

    def loss(logp, old, rewards, mask, group_ids, *, tau, normalization):
        calls.append(1)
        value, metrics = real(logp, old, rewards, mask, group_ids, tau=tau, normalization=normalization)
        return (value * float("nan"), metrics) if len(calls) > n_good else (value, metrics)

    return loss


def test_nan_steps_are_skipped_then_the_run_stops(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(LOSSES, "k15", _nan_loss_after(3))  # steps 1-3 fine, then NaN forever
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_model_dir, "rollout.segment_tokens=0", "algorithm.max_consecutive_skips=2")
    with pytest.raises(UserError, match=r"2 optimizer steps in a row had a non-finite loss .*iter_000004"):
        train(cfg, log=lambda s: None)
    metrics = _metrics(run)
    assert [m["train/skipped_steps"] for m in metrics] == [0, 0, 0, 1, 1]
    before = load_file(latest_checkpoint(run) / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in before.values())  # the last good checkpoint is intact


def test_a_single_nan_step_is_skipped_and_training_goes_on(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    real = LOSSES["k15"]

    def loss(logp, old, rewards, mask, group_ids, *, tau, normalization):
        calls.append(1)
        value, metrics = real(logp, old, rewards, mask, group_ids, tau=tau, normalization=normalization)
        return (value * float("inf"), metrics) if len(calls) == 2 else (value, metrics)

    monkeypatch.setitem(LOSSES, "k15", loss)
    run = tmp_path / "run"
    train(_cfg(run, tiny_model_dir, "rollout.segment_tokens=0", "algorithm.max_consecutive_skips=2",
               "iterations=4"), log=lambda s: None)
    assert [m["train/skipped_steps"] for m in _metrics(run)] == [0, 1, 0, 0]
    weights = load_file(run / "final" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_cli_resume_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run to resume" in err[0]


def test_resume_with_an_iteration_token_budget_is_exact(tmp_path, tiny_model_dir, crash_then_resume):
    """rollout.iteration_tokens: the checkpointed buffer holds trajectories not started yet
    (no tokens) next to cut ones; a run killed after iteration 2 and resumed ends exactly like
    an uninterrupted one."""
    extra = ("rollout.segment_tokens=0", "rollout.iteration_tokens=6", "rollout.max_batch=2", "iterations=4",
             "checkpoint_keep=0")
    ref = tmp_path / "ref"
    train(_cfg(ref, tiny_model_dir, *extra), log=lambda s: None)
    state = json.loads((ref / "checkpoints" / "iter_000002" / "state.json").read_text())
    assert any(not m["response_ids"] for g in state["replay_buffer"]["groups"] for m in g)  # not started
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_model_dir, *extra)
    crash_then_resume(cfg, 3, _at(cfg, 3))
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["rollout/not_started"] for m in _metrics(ref)] == [m["rollout/not_started"] for m in _metrics(run)]


def test_kept_optimizer_resumes_exactly(tmp_path, tiny_model_dir, crash_then_resume):
    """algorithm.optimizer_reset=false: AdamW's moments carry across iterations and
    checkpoints, so a run killed after iteration 2 and resumed ends like an uninterrupted one;
    and the kept moments change the run (it differs from the reset one)."""
    extra = ("algorithm.optimizer_reset=false", "iterations=4", "rollout.segment_tokens=0")
    ref = tmp_path / "ref"
    train(_cfg(ref, tiny_model_dir, *extra), log=lambda s: None)
    assert (ref / "checkpoints" / "iter_000004" / "optimizer.pt").is_file()
    state = torch.load(ref / "checkpoints" / "iter_000004" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in state["state"].values()} == {4}  # 4 iterations x 1 step, one AdamW
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_model_dir, *extra)
    crash_then_resume(cfg, 3, _at(cfg, 3))
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    reset = tmp_path / "reset"
    train(_cfg(reset, tiny_model_dir, *extra[1:]), log=lambda s: None)
    assert not (reset / "checkpoints" / "iter_000004" / "optimizer.pt").exists()
    c = load_file(reset / "final" / "model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_lr_schedule_runs_and_resumes_exactly(tmp_path, tiny_model_dir, crash_then_resume):
    """algorithm.lr_schedule=cosine: every iteration's update uses update.lr_at's rate (its
    AdamW is new each iteration, so the rate is the whole state), logged as train/lr from
    lr at iteration 1 to lr * lr_end_ratio at the last; resumed after iteration 2, the run
    ends like an uninterrupted one."""
    extra = ("algorithm.lr_schedule=cosine", "algorithm.lr_end_ratio=0.2", "iterations=4",
             "rollout.segment_tokens=0")
    ref = tmp_path / "ref"
    train(_cfg(ref, tiny_model_dir, *extra), log=lambda s: None)
    lrs = [m["train/lr"] for m in _metrics(ref)]
    # t = 0, 1/3, 2/3, 1: 0.01 * (0.2 + 0.8 * (1 + cos(pi t)) / 2) = 0.01, 0.008, 0.004, 0.002
    assert lrs == pytest.approx([0.01, 0.008, 0.004, 0.002])
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_model_dir, *extra)
    crash_then_resume(cfg, 3, _at(cfg, 3))
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["train/lr"] for m in _metrics(run)] == lrs


def test_a_time_budget_stop_keeps_the_rollout_done_ahead(tmp_path, tiny_model_dir):
    """rollout.overlap rolls out iteration i+1 while iteration i trains. A run that runs out
    of time there checkpoints that rollout's groups in the buffer (put back, not trained
    on), and the resumed run trains on them first: it ends exactly as an uninterrupted
    run, with no group id spent on groups never trained on."""
    def cfg(out, *extra):
        return _cfg(out, tiny_model_dir, "iterations=4", "rollout.overlap=true", "rollout.segment_tokens=0",
                    "eval.every=0", "checkpoint_every=0", *extra)

    ref = tmp_path / "ref"
    train(cfg(ref), log=lambda s: None)
    run = tmp_path / "run"
    said = []
    train(cfg(run, "time_budget_minutes=1e-6"), log=said.append)  # out of time after iteration 1
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["iteration"] == 1 and len(state["replay_buffer"]["groups"]) == 4  # iteration 2's, put back
    assert state["next_group"] == 8
    train(cfg(run), resume=True, log=lambda s: None)
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = _metrics(ref), _metrics(run)
    assert [m["iteration"] for m in mb] == [1, 2, 3, 4]
    for x, y in zip(ma, mb):  # the same trajectories, rewards and updates (iteration 2 generated nothing)
        assert (x["rollout/trained"], x["reward/mean"], x["loss/policy"]) == (
            y["rollout/trained"], y["reward/mean"], y["loss/policy"])
    ends = [json.loads((out / "final" / "state.json").read_text())["next_group"] for out in (ref, run)]
    assert ends == [16, 16]  # 4 iterations x 4 prompts: no group id spent on a rollout that was lost
