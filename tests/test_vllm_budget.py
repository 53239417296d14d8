"""The vLLM engine's per-call output-token budget (rollout.iteration_tokens, report §2.6.2),
with HFEngine's semantics: running requests are cut at the budget, requests not started
come back empty.

Needs vllm (skipped otherwise): `make test-vllm`. Its own engine, 4 sequences at a time, so
that a call holds more requests than vLLM runs together (one engine per process: the
module's fixture closes it before the next module's starts).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from k15rl.config import VllmConfig, load_config  # noqa: E402
from k15rl.models.loading import encode_prompt, load_model, load_tokenizer, stop_token_ids  # noqa: E402
from k15rl.rollout import vllm_engine as ve  # noqa: E402
from k15rl.rollout.collect import partial_rollout, rollout  # noqa: E402
from k15rl.rollout.engine import SamplingParams  # noqa: E402
from k15rl.rollout.replay import ReplayBuffer  # noqa: E402
from k15rl.tasks import get_task, make_prompts  # noqa: E402
from k15rl.trainer.warmup import ensure_builtin  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402

SLOTS = 4


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    path = ensure_builtin()
    tok, model = load_tokenizer(path), load_model(path)
    engine = ve.VLLMEngine(path, tok, VllmConfig(kv_cache_gb=0.25, max_num_seqs=SLOTS), max_model_len=512, seed=0)
    prompts = make_prompts(get_task("sort"), "test", 2, (1, 2, 3, 4, 5, 6), seed=1)
    yield tok, model, engine, prompts
    engine.close()


def _greedy(tok, model, n=48):
    return SamplingParams(max_new_tokens=n, temperature=0.0, stop_token_ids=stop_token_ids(tok, model))


def test_budget_cuts_running_requests_and_leaves_the_rest_unstarted(setup):
    """12 requests, 4 at a time, a budget of 60 tokens: the tokens sampled are 60 or a few
    more (the last step's), every started request's tokens and log-probs are the start of
    its unbudgeted greedy generation (no forced stop token left in), those cut end
    "length", and the requests never started come back empty."""
    tok, model, engine, prompts = setup
    reqs = [GenerationRequest(encode_prompt(tok, p.messages), id=f"r{i}") for i, p in enumerate(prompts)]
    params = _greedy(tok, model)
    whole = engine.generate(reqs, params)
    cut = engine.generate(reqs, params, token_budget=60)
    spent = sum(len(s.token_ids) for s in cut)
    assert 60 <= spent < 60 + SLOTS + 1
    started = [s for s in cut if s.started]
    assert SLOTS <= len(started) < len(reqs)
    assert [s for s in cut if not s.started] == [s for s in cut if s.token_ids == []]
    for w, c in zip(whole, cut):
        if not c.started:
            assert c.finish_reason == "length"
            continue
        assert c.token_ids == w.token_ids[:len(c.token_ids)]
        assert max(abs(x - y) for x, y in zip(c.logprobs, w.logprobs)) < 1e-4
        if len(c.token_ids) < len(w.token_ids):
            assert c.finish_reason == "length"
        else:
            assert c.finish_reason == w.finish_reason
    assert any(c.started and len(c.token_ids) < len(w.token_ids) for w, c in zip(whole, cut))  # some were cut
    assert not ve._BUDGETS  # the call's budget is gone with it


def test_requests_not_started_when_the_budget_runs_out_are_withdrawn(setup, monkeypatch):
    """Once the budget is spent, the requests vLLM has not scheduled are aborted, not
    started for one forced token (a prefill each): of 12 requests, 4 at a time, only
    those that ran plus at most one batch's worth were ever scheduled, nothing is left
    in the engine, and the next call runs as usual."""
    tok, model, engine, prompts = setup
    made = []

    class Recorded(ve._Budget):
        def __init__(self, limit: int):
            super().__init__(limit)
            made.append(self)

    monkeypatch.setattr(ve, "_Budget", Recorded)
    reqs = [GenerationRequest(encode_prompt(tok, p.messages)) for p in prompts]
    cut = engine.generate(reqs, _greedy(tok, model), token_budget=40)
    ran = {i for i, s in enumerate(cut) if s.started}
    (budget,) = made
    assert ran <= budget.started
    assert len(budget.started) <= len(ran) + SLOTS < len(reqs)  # without withdrawing, all 12 would start
    assert engine.llm.llm_engine.get_num_unfinished_requests() == 0
    again = engine.generate(reqs[:SLOTS], _greedy(tok, model, 8))
    assert all(s.started and s.token_ids for s in again)


@pytest.mark.parametrize("budget", [40, 0])
def test_an_interrupted_call_leaves_nothing_in_the_engine(setup, monkeypatch, budget):
    """A call interrupted mid-way (Ctrl-C in the engine loop), with a budget or without,
    aborts its requests: the next call gets only its own outputs."""
    tok, model, engine, prompts = setup
    reqs = [GenerationRequest(encode_prompt(tok, p.messages)) for p in prompts]
    core = engine.llm.llm_engine
    step, calls = core.step, []

    def interrupted():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(core, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.generate(reqs, _greedy(tok, model), token_budget=budget)
    monkeypatch.setattr(core, "step", step)
    assert core.get_num_unfinished_requests() == 0
    params = _greedy(tok, model, 8)
    assert engine.generate(reqs[:2], params, token_budget=1000) == engine.generate(reqs[:2], params)


def test_budget_larger_than_the_work_changes_nothing(setup):
    tok, model, engine, prompts = setup
    reqs = [GenerationRequest(encode_prompt(tok, p.messages)) for p in prompts[:6]]
    params = _greedy(tok, model, 32)
    a = engine.generate(reqs, params)
    b = engine.generate(reqs, params, token_budget=10_000)
    assert [(s.token_ids, s.finish_reason) for s in a] == [(s.token_ids, s.finish_reason) for s in b]


def test_partial_rollout_with_a_budget_continues_to_the_unbudgeted_answers(setup):
    """partial_rollout with token_budget on vLLM (tests/test_partial.py's test for HFEngine):
    each iteration samples about the budget, unstarted and cut trajectories wait in the
    buffer; once it drains, every trajectory equals its uninterrupted greedy generation."""
    tok, model, engine, prompts = setup
    params = _greedy(tok, model, 40)
    prompts = prompts[:4]
    whole = rollout(engine, tok, prompts, 2, params)
    buffer = ReplayBuffer()
    results = [partial_rollout(engine, tok, buffer, prompts, 2, params, version=0, segment_tokens=0, max_tokens=40,
                               first_group=0, token_budget=30)]
    assert results[0].not_started > 0
    assert 30 <= results[0].tokens_generated < 30 + SLOTS + 1
    while len(buffer):
        results.append(partial_rollout(engine, tok, buffer, [], 2, params, version=len(results), segment_tokens=0,
                                       max_tokens=40, first_group=4, token_budget=30))
        assert len(results) < 30
    got = sorted((t for r in results for t in r.trajectories), key=lambda t: t.group)
    assert [(t.group, t.prompt.id) for t in got] == [(t.group, t.prompt.id) for t in whole]
    for t, w in zip(got, whole):
        assert t.response_ids == w.response_ids and t.finish_reason == w.finish_reason
        assert max(abs(x - y) for x, y in zip(t.logprobs, w.logprobs)) < 1e-4
    assert sum(r.tokens_generated for r in results) == sum(len(t.response_ids) for t in got)


def test_training_loop_with_iteration_tokens_on_vllm(setup, tmp_path):
    """rollout.iteration_tokens with rollout.engine=vllm in the loop (its own engine, after
    this module's is closed): trajectories wait unstarted in the buffer, and the engine's
    log-probs equal the trainer's before each update."""
    tok, model, engine, prompts = setup
    engine.close()
    out = tmp_path / "run"
    cfg = load_config(None, [
        f"out={out}", "model.path=builtin", "data.tasks=[sort]", "data.train_per_level=10", "data.test_levels=[1]",
        "data.test_per_level=2", "iterations=3", "rollout.k=4", "rollout.prompts_per_iteration=4",
        "rollout.max_new_tokens=64", "rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0.25",
        "rollout.vllm.max_num_seqs=8", "rollout.iteration_tokens=200", "eval.every=0", "threads=1",
        "algorithm.lr=1e-3",
    ])
    from k15rl.trainer.loop import train

    train(cfg, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert any(r["rollout/not_started"] > 0 for r in rows)
    gaps = [r["rollout/logprob_gap_max"] for r in rows if "rollout/logprob_gap_max" in r]  # iterations that trained
    print("per iteration (not started, log-prob gap):",
          [(r["rollout/not_started"], r.get("rollout/logprob_gap_max")) for r in rows])
    assert gaps and max(gaps) < 1e-4
