"""The log-prob gap (rollout/logprob_gap_*): the engine's recorded log-probs against the
trainer's for the same tokens, before the first optimizer step; the loop warns above
rollout.logprob_gap_warn."""

from functools import partial

import pytest
import torch

from k15rl.algorithms import k15_loss
from k15rl.config import AlgorithmConfig, load_config
from k15rl.models.loading import load_model, load_tokenizer
from k15rl.rollout.collect import rollout
from k15rl.rollout.engine import HFEngine, SamplingParams
from k15rl.tasks import get_task, make_prompts
from k15rl.trainer.logprobs import token_logprobs
from k15rl.trainer.loop import note_logprob_gap
from k15rl.trainer.update import PolicyTrainer, UpdatePlan, logprob_gap, make_train_batch


def _setup(tiny_model_dir, temperature=1.0):
    torch.set_num_threads(1)
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    prompts = make_prompts(get_task("hops"), "train", 3, (2,), seed=0)
    trajs = rollout(HFEngine(model, tok), tok, prompts, 4,
                    SamplingParams(max_new_tokens=12, temperature=temperature, seed=0))
    for i, t in enumerate(trajs):
        t.reward = float(i % 3 == 0)
    return tok, model, trajs


def _update(model, tok, trajs, version=0, temperature=1.0, **algorithm):
    plan = UpdatePlan(partial(k15_loss, tau=0.5), AlgorithmConfig(lr=1e-3, **algorithm), temperature, True,
                      tok.pad_token_id)
    return PolicyTrainer(model, plan).update(trajs, version=version, seed=0)


def _trainer_logprobs(model, tok, trajs, temperature=1.0) -> list[list[float]]:
    batch = make_train_batch(trajs, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch.tokens, temperature)  # [N, T]
    return [lp[i, : len(t.response_ids)].tolist() for i, t in enumerate(trajs)]


@pytest.mark.parametrize("recompute", [False, True])
def test_a_known_offset_gives_exactly_that_gap(tiny_model_dir, recompute):
    """Recorded log-probs = the trainer's + 0.25 on every token: gap 0.25, mean and max,
    from the first mini-batch and from the full recomputation alike."""
    tok, model, trajs = _setup(tiny_model_dir)
    for t, lp in zip(trajs, _trainer_logprobs(model, tok, trajs)):
        t.logprobs = [x + 0.25 for x in lp]
    m = _update(model, tok, trajs, recompute_old_logprobs=recompute, minibatches=3)
    assert m["rollout/logprob_gap_mean"] == pytest.approx(0.25, abs=1e-6)
    assert m["rollout/logprob_gap_max"] == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("train_on_stale", [False, True])
def test_stale_tokens_are_left_out(tiny_model_dir, train_on_stale):
    """Tokens recorded by an older policy (partial rollouts) are off by 5 nats: not counted.
    train_on_stale: pi_i's log-probs recomputed for the whole batch (the gap over every
    fresh token); else the first mini-batch's fresh tokens."""
    tok, model, trajs = _setup(tiny_model_dir)
    for t, lp in zip(trajs, _trainer_logprobs(model, tok, trajs)):
        cut = len(lp) // 2  # the first half sampled by version 0, the rest by version 1
        t.versions = [0] * cut + [1] * (len(lp) - cut)
        t.logprobs = [x + (5.0 if j < cut else 0.5) for j, x in enumerate(lp)]
    plan = UpdatePlan(partial(k15_loss, tau=0.5), AlgorithmConfig(lr=1e-3, minibatches=2), 1.0, train_on_stale,
                      tok.pad_token_id)
    m = PolicyTrainer(model, plan).update(trajs, version=1, seed=0)
    assert m["rollout/logprob_gap_mean"] == pytest.approx(0.5, abs=1e-6)
    assert m["rollout/logprob_gap_max"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_builtin_engine_agrees_with_the_trainer(tiny_model_dir, temperature):
    """The HF engine (KV cache, left-padded prefill, continuous batching) against the
    trainer's one right-padded forward, float32, threads=1. Measured: mean 4.6e-8, max
    4.8e-7 (temperature 1); mean 6.3e-8, max 4.8e-7 (0.7); with the trainer under bf16
    autocast mean 2.4e-4 / 3.4e-4, max 9.3e-4 / 1.3e-3. Bound here: max < 1e-5."""
    tok, model, trajs = _setup(tiny_model_dir, temperature)
    m = _update(model, tok, trajs, temperature=temperature)
    assert m["rollout/logprob_gap_max"] < 1e-5
    assert 0 <= m["rollout/logprob_gap_mean"] <= m["rollout/logprob_gap_max"]


def test_logprob_gap_counts_only_the_masked_tokens():
    rec = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])  # [2, 3]
    new = torch.tensor([[-1.5, -1.0, -7.0], [-3.0, -4.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    g = logprob_gap(rec, new, mask)
    assert g["rollout/logprob_gap_mean"] == pytest.approx(0.5) and g["rollout/logprob_gap_max"] == 1.0
    assert logprob_gap(rec, new, torch.zeros_like(mask)) == {}  # nothing to compare: no metric


def test_the_loop_warns_above_the_bound_only():
    lines: list[str] = []
    metrics = {"rollout/logprob_gap_mean": 0.12, "rollout/logprob_gap_max": 1.5}
    note_logprob_gap(0.1, metrics, 6, lines.append)
    assert len(lines) == 1 and lines[0].startswith("iteration 7: warning:")
    assert "0.1200" in lines[0] and "1.5000" in lines[0] and "rollout.logprob_gap_warn=0.1" in lines[0]
    note_logprob_gap(0.2, metrics, 6, lines.append)  # below the bound
    note_logprob_gap(0.0, metrics, 6, lines.append)  # 0 = never
    note_logprob_gap(0.1, {}, 6, lines.append)  # no metric (every token stale)
    assert len(lines) == 1


def test_the_bound_is_one_config_key():
    assert load_config(None).rollout.logprob_gap_warn == 0.1
    assert load_config(None, ["rollout.logprob_gap_warn=0"]).rollout.logprob_gap_warn == 0.0
    with pytest.raises(Exception, match="config key rollout.logprob_gap_warn: must be >= 0"):
        load_config(None, ["rollout.logprob_gap_warn=-1"])


def test_the_loop_warns_on_every_backend():
    """The loop (the master on Ray) gets the trainer's metrics and calls the warning itself."""
    import inspect

    from k15rl.trainer import loop

    assert "note_logprob_gap(cfg.rollout.logprob_gap_warn, train_metrics" in inspect.getsource(loop.train)
