"""End-to-end: the loop learns, writes its logs, plots, summary and an HF model."""

import json

import pytest

from k15rl.config import load_config
from k15rl.tasks import TASKS
from k15rl.tasks.base import Problem
from k15rl.trainer.loop import train


class DigitFirstTask:
    """A toy task a random model can learn in seconds: reward 1 iff the response starts
    with a digit. It plugs in through the task registry, like any new task."""

    name = "digit_first"
    levels = (1, 2, 3, 4, 5)

    def generate(self, rng, level):
        return Problem(f"Say a number {rng.randint(0, 10**6)}.", "", level)

    def verify(self, response, answer):
        return response[:1].isdigit()

    def warmup_trace(self, problem, rng):
        return "1"


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)


def test_training_reward_rises(tmp_path, tiny_model_dir, toy_task):
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
        "data.train_per_level=50", "data.test_per_level=8", "iterations=12", "rollout.k=8",
        "rollout.prompts_per_iteration=16", "rollout.max_new_tokens=3", "algorithm.lr=0.01",
        "algorithm.tau=0.01", "eval.every=6", "threads=1",
    ])
    summary = train(cfg, log=lambda s: None)
    out = tmp_path / "run"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, 13))
    assert [e["iteration"] for e in evals if e["temperature"] == 1.0] == [0, 6, 12]
    assert [e["iteration"] for e in evals if e["temperature"] == 0.0] == [0, 12]  # greedy at both ends
    assert 0 <= summary["test_accuracy_greedy_after"] <= 1
    first = sum(m["reward/accuracy"] for m in metrics[:3]) / 3
    last = sum(m["reward/accuracy"] for m in metrics[-3:]) / 3
    assert last > first + 0.3, (first, last)
    assert summary["test_accuracy_after"] > summary["test_accuracy_before"]
    for key in ("loss/policy", "loss/l2", "rollout/len_mean", "rollout/tokens_per_s", "time/rollout", "time/train"):
        assert key in metrics[0]
    assert (out / "curves.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["iterations"] == 12

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")


def test_refuses_existing_run_without_overwrite(tmp_path, tiny_model_dir, toy_task):
    from k15rl.errors import UserError

    args = [f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
            "data.train_per_level=10", "data.test_per_level=2", "iterations=1", "rollout.k=2",
            "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=2", "threads=1"]
    train(load_config(None, args), log=lambda s: None)
    with pytest.raises(UserError, match="already holds a run"):
        train(load_config(None, args), log=lambda s: None)
    train(load_config(None, args), overwrite=True, log=lambda s: None)


@pytest.mark.parametrize("sampler", ["prioritized", "curriculum"])
def test_loop_runs_with_each_sampler(tmp_path, tiny_model_dir, toy_task, sampler):
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
        "data.train_per_level=10", "data.test_per_level=2", "iterations=2", "rollout.k=2",
        "rollout.prompts_per_iteration=3", "rollout.max_new_tokens=2", "threads=1", f"sampler.name={sampler}",
        "sampler.warmup_iterations=1", "sampler.hard_min_level=4",
    ])
    train(cfg, log=lambda s: None)
    state = json.loads((tmp_path / "run" / "final" / "state.json").read_text())
    assert state["iteration"] == 2 and "rng" in state["sampler"]


@pytest.mark.parametrize("continue_first,keep_kv", [(True, False), (False, False), (True, True)])
def test_loop_with_partial_rollouts(tmp_path, tiny_model_dir, toy_task, continue_first, keep_kv):
    """Segments of 2 tokens, responses up to 6: trajectories are cut, continued and trained
    (with keep_kv, continued from the engine's kept KV cache)."""
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
        "data.train_per_level=20", "data.test_per_level=2", "iterations=5", "rollout.k=2",
        "rollout.prompts_per_iteration=4", "rollout.max_new_tokens=6", "rollout.segment_tokens=2",
        f"rollout.continue_first={str(continue_first).lower()}", "rollout.train_on_stale_segments=false",
        f"rollout.keep_kv={str(keep_kv).lower()}", f"algorithm.recompute_old_logprobs={str(keep_kv).lower()}",
        "eval.every=0", "threads=1", "checkpoint_every=2",
    ])
    train(cfg, log=lambda s: None)
    out = tmp_path / "run"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[0]["rollout/frac_cut"] > 0 and metrics[1]["rollout/continued"] > 0
    for m in metrics:
        rows = sum(m[f"rollout/num_{o}"] for o in ("stop", "cut", "repeat", "max_len"))
        new_rows = rows - m["rollout/continued"]
        assert new_rows % 2 == 0  # whole groups of k = 2 are started
        if continue_first:
            assert rows <= 8  # cut trajectories take their rows first; new prompts fill the rest
        else:
            assert new_rows == 8
    assert sum(m["rollout/trained"] for m in metrics) > 0
    state = json.loads((out / "checkpoints" / "iter_000002" / "state.json").read_text())
    assert "replay_buffer" in state and state["next_group"] >= 4


@pytest.mark.parametrize("keep_kv", [False, True])
def test_loop_with_an_iteration_token_budget(tmp_path, tiny_model_dir, toy_task, keep_kv):
    """rollout.iteration_tokens: 8 trajectories an iteration for 2 slots and a budget of 6
    tokens; what is cut or not started waits in the buffer (checkpointed), and is trained on
    once its group has finished."""
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
        "data.train_per_level=20", "data.test_per_level=2", "iterations=5", "rollout.k=2",
        "rollout.prompts_per_iteration=4", "rollout.max_new_tokens=6", "rollout.iteration_tokens=6",
        "rollout.max_batch=2", f"rollout.keep_kv={str(keep_kv).lower()}",
        f"algorithm.recompute_old_logprobs={str(keep_kv).lower()}", "eval.every=0", "threads=1", "checkpoint_every=2",
    ])
    train(cfg, log=lambda s: None)
    out = tmp_path / "run"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        started = sum(m[f"rollout/num_{o}"] for o in ("stop", "cut", "repeat", "max_len"))
        assert started + m["rollout/not_started"] <= 8  # continue_first: the buffer is topped up to 8
        assert m["rollout/not_started"] > 0  # 2 slots and 6 tokens cannot start 8 trajectories
    assert sum(m["rollout/trained"] for m in metrics) > 0
    state = json.loads((out / "checkpoints" / "iter_000002" / "state.json").read_text())
    members = [m for g in state["replay_buffer"]["groups"] for m in g]
    assert any(not m["response_ids"] for m in members)  # not started yet: kept for the next iteration


def test_loop_with_overlapped_rollouts(tmp_path, tiny_model_dir, toy_task):
    """rollout.overlap: the next rollout runs during the update, by the policy one version
    behind; its tokens are stale when trained on, and learning still happens."""
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
        "data.train_per_level=50", "data.test_per_level=8", "iterations=12", "rollout.k=8",
        "rollout.prompts_per_iteration=16", "rollout.max_new_tokens=3", "algorithm.lr=0.01",
        "algorithm.tau=0.01", "eval.every=6", "threads=1", "rollout.overlap=true", "checkpoint_every=4",
    ])
    summary = train(cfg, log=lambda s: None)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, 13))
    # iterations after an overlapped rollout train on pi_{i-1}'s samples; after a boundary
    # (evaluation at 6, checkpoint at 4 and 8) the rollout is synchronous and fresh
    stale = [m["train/stale_token_frac"] for m in metrics]
    assert [i + 1 for i, f in enumerate(stale) if f == 0.0] == [1, 5, 7, 9], stale
    assert all(f == 1.0 for i, f in enumerate(stale) if i + 1 not in (1, 5, 7, 9))
    first = sum(m["reward/accuracy"] for m in metrics[:3]) / 3
    last = sum(m["reward/accuracy"] for m in metrics[-3:]) / 3
    assert last > first + 0.2, (first, last)
    assert summary["test_accuracy_after"] > summary["test_accuracy_before"]


def always_right(response, answer):
    """A user reward function, plugged in by module:function."""
    return 1.0


def test_loop_uses_reward_sources(tmp_path, tiny_model_dir, toy_task):
    """reward.sources picks the reward of a data source (here the toy task) in training and evaluation."""
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "data.tasks=[digit_first]",
        "data.train_per_level=10", "data.test_per_level=2", "iterations=2", "rollout.k=2",
        "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=2", "threads=1",
        "reward.sources=[digit_first=test_e2e:always_right]",
    ])
    summary = train(cfg, log=lambda s: None)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/accuracy"] for m in metrics] == [1.0, 1.0]
    assert summary["test_accuracy_before"] == 1.0
