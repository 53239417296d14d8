"""Continuous batching, repeat detection, partial rollouts and the replay buffer (report §2.6.2)."""

import json
import random

import pytest
import torch

from k15rl.models.loading import encode_prompt, load_model, load_tokenizer
from k15rl.rewards import score
from k15rl.rollout.collect import partial_rollout, rollout
from k15rl.rollout.engine import HFEngine, RepeatDetector, SamplingParams
from k15rl.rollout.replay import Member, ReplayBuffer
from k15rl.tasks import TASKS, get_task
from k15rl.trainer.update import make_train_batch
from k15rl.types import GenerationRequest, Prompt, Segment


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


QUESTIONS = ["Compute 12+7.", "Sort: d b a c", "Rules: a->b b->a. Start at a and make 3 hops.", "Hi", "Sort: q w e r t y"]


def _ids(tok, q):
    return encode_prompt(tok, (("user", q),))


# -- continuous batching -------------------------------------------------------------

class CountingModel(torch.nn.Module):
    """Wraps a model and records the batch size and length of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config  # the engine's attention groups switch the inner model's attention
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids=None, cache=None, **kw):
        self.calls.append(tuple(input_ids.shape))
        return self.inner(input_ids=input_ids, cache=cache, **kw)


def test_greedy_with_refills_equals_hf_generate_per_prompt(policy):
    model, tok = policy
    prompts = [_ids(tok, q) for q in QUESTIONS]
    budgets = [3, 14, 7, 11, 5]  # slots free up at different steps and are refilled
    engine = HFEngine(model, tok, max_batch=2)
    reqs = [GenerationRequest(p, max_new_tokens=b) for p, b in zip(prompts, budgets)]
    segs = engine.generate(reqs, SamplingParams(max_new_tokens=16, temperature=0))
    for p, b, seg in zip(prompts, budgets, segs):
        ref = model.generate(torch.tensor([p]), max_new_tokens=b, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert seg.token_ids == ref
        assert seg.finish_reason == "length"


def test_finished_slot_is_refilled_at_once(policy):
    model, tok = policy
    counting = CountingModel(model)
    engine = HFEngine(counting, tok, max_batch=2)
    engine._cache_kw = "cache"
    p = _ids(tok, "Hi")
    reqs = [GenerationRequest(p, max_new_tokens=2), GenerationRequest(p, max_new_tokens=10),
            GenerationRequest(p, max_new_tokens=10)]
    segs = engine.generate(reqs, SamplingParams(max_new_tokens=10, temperature=0))
    assert [len(s.token_ids) for s in segs] == [2, 10, 10]
    decode = [b for b, t in counting.calls if t == 1]
    prefill = [b for b, t in counting.calls if t > 1]
    assert prefill == [1, 1]  # the first two share their prompt (one row); the third alone, once the first finished
    assert max(decode) <= 2
    # forward passes: prefill(A, B) + 9 decodes of B (A rides along for 1) + prefill(C) + the
    # 2 decodes C needs after B is done = 13; fixed batches would take 1 + 9 + 1 + 9 = 20
    assert len(counting.calls) == 13, counting.calls


def test_tokens_per_step_and_logprobs_match_a_fresh_run(policy):
    """A request's tokens and log-probs do not depend on which other requests share the batch."""
    model, tok = policy
    prompts = [_ids(tok, q) for q in QUESTIONS]
    params = SamplingParams(max_new_tokens=9, temperature=0)
    alone = [HFEngine(model, tok).generate([GenerationRequest(p)], params)[0] for p in prompts]
    mixed = HFEngine(model, tok, max_batch=3).generate([GenerationRequest(p) for p in prompts], params)
    for a, m in zip(alone, mixed):
        assert a.token_ids == m.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(m.logprobs), atol=1e-4, rtol=0)


# -- repeat detection ------------------------------------------------------------------

def _brute_force_repeats(tokens, ngram, times, min_tokens):
    """Reference: is the tail one p-gram repeated, covering both `times` copies and `min_tokens`?"""
    for p in range(1, ngram + 1):
        span = p
        while span < len(tokens) and tokens[-span - 1] == tokens[-span - 1 + p]:
            span += 1
        if span >= max(p * times, min_tokens) and span <= len(tokens):
            return True
    return False


@pytest.mark.parametrize("seed", range(5))
def test_repeat_detector_matches_brute_force(seed):
    rng = random.Random(seed)
    ngram, times, min_tokens = 6, 3, 8
    seqs = []
    for _ in range(6):
        s = []
        while len(s) < 120:  # random tokens interleaved with short loops
            if rng.random() < 0.3:
                unit = [rng.randrange(4) for _ in range(rng.randint(1, 7))]
                s += unit * rng.randint(1, 5)
            else:
                s.append(rng.randrange(4))
        seqs.append(s[:120])
    prefix_len = rng.randint(0, 30)
    det = RepeatDetector(ngram, times, min_tokens)
    det.add_rows([s[:prefix_len] for s in seqs])
    for t in range(prefix_len, 120):
        flags = det.step(torch.tensor([s[t] for s in seqs]))
        for i, s in enumerate(seqs):
            assert bool(flags[i]) == _brute_force_repeats(s[: t + 1], ngram, times, min_tokens), (i, t)


def test_repeat_detector_quiet_on_every_warmup_trace(policy):
    """Default settings never fire on the built-in tasks' own long chains of thought. ARC's
    answers are grids, whose equal rows repeat by design: vis_arc is trained with repeat
    detection off (k15rl/tasks/arc.py), and the detector does fire on such a grid."""
    _, tok = policy
    det = RepeatDetector(20, 4, 32)
    grid = "answer: " + "|".join(["0000000000"] * 10)  # a 10x10 ARC answer of one colour
    det.add_rows([[]])
    assert any(bool(det.step(torch.tensor([t]))[0]) for t in tok.encode(grid))
    for name in set(TASKS) - {"vis_arc"}:
        task = get_task(name)
        rng = random.Random(0)
        for level in task.levels:
            for _ in range(5):
                ids = tok.encode(task.warmup_trace(task.generate(rng, level), rng))
                det = RepeatDetector(20, 4, 32)
                det.add_rows([[]])
                assert not any(bool(det.step(torch.tensor([t]))[0]) for t in ids), (name, level)


def test_engine_stops_on_repeat_where_the_reference_first_fires(policy):
    model, tok = policy
    prompts = [_ids(tok, q) for q in QUESTIONS]
    params = SamplingParams(max_new_tokens=120, temperature=0, repeat_ngram=8, repeat_times=3, repeat_min_tokens=6)
    segs = HFEngine(model, tok).generate([GenerationRequest(p) for p in prompts], params)
    free = HFEngine(model, tok).generate([GenerationRequest(p) for p in prompts],
                                         SamplingParams(max_new_tokens=120, temperature=0))
    assert any(s.finish_reason == "repeat" for s in segs)  # a random tiny model loops under greedy decoding
    for s, f in zip(segs, free):
        first = next((t for t in range(1, 121) if _brute_force_repeats(f.token_ids[:t], 8, 3, 6)), None)
        if first is None:
            assert s.finish_reason == "length" and s.token_ids == f.token_ids
        else:
            assert s.finish_reason == "repeat" and s.token_ids == f.token_ids[:first]


def test_a_request_without_repeat_check_runs_past_its_repeats(policy):
    """`repeat_check=False` (a task whose right answers repeat by design): the detector
    does not stop that request, while the others of the same call are stopped as before."""
    model, tok = policy
    prompts = [_ids(tok, q) for q in QUESTIONS]
    params = SamplingParams(max_new_tokens=120, temperature=0, repeat_ngram=8, repeat_times=3, repeat_min_tokens=6)
    watched = HFEngine(model, tok).generate([GenerationRequest(p) for p in prompts], params)
    mixed = HFEngine(model, tok).generate([GenerationRequest(p, repeat_check=i % 2 == 0) for i, p in enumerate(prompts)],
                                          params)
    free = HFEngine(model, tok).generate([GenerationRequest(p) for p in prompts],
                                         SamplingParams(max_new_tokens=120, temperature=0))
    assert any(w.finish_reason == "repeat" for i, w in enumerate(watched) if i % 2)  # one unwatched would have been cut
    for i, (m, w, f) in enumerate(zip(mixed, watched, free)):
        expect = w if i % 2 == 0 else f
        assert (m.token_ids, m.finish_reason) == (expect.token_ids, expect.finish_reason), i


class _Recorder:
    """An engine that records its requests and answers each with one stop token."""

    def __init__(self):
        self.requests: list[GenerationRequest] = []

    def generate(self, requests, params, **kw):
        self.requests += list(requests)
        return [Segment([0], [0.0], "stop") for _ in requests]


def test_prompts_of_tasks_that_repeat_by_design_are_not_watched(policy):
    _, tok = policy
    prompts = [Prompt("a", (("user", "grid?"),), "00|00", "vis_arc"), Prompt("s", (("user", "Sort: b a"),), "a b", "sort")]
    assert TASKS["vis_arc"].repeats_by_design and not getattr(TASKS["sort"], "repeats_by_design", False)
    engine = _Recorder()
    rollout(engine, tok, prompts, 2, SamplingParams(max_new_tokens=4, repeat_ngram=20))
    partial_rollout(engine, tok, ReplayBuffer(), prompts, 2, SamplingParams(max_new_tokens=4, repeat_ngram=20),
                    version=0, segment_tokens=2, max_tokens=4, first_group=0)
    assert [r.repeat_check for r in engine.requests] == [False, False, True, True] * 2


def test_repeat_penalty_in_score():
    p = Prompt("x", (("user", "q"),), "1", "integer")
    from k15rl.types import Trajectory

    ts = [Trajectory(p, 0, [], [1], [0.0], "repeat", text="answer: 1"),
          Trajectory(p, 0, [], [1], [0.0], "stop", text="answer: 2")]
    score(ts, repeat_penalty=0.5)
    assert [t.reward for t in ts] == [0.5, 0.0]  # correct but repeating: 1 - 0.5


# -- partial rollouts ------------------------------------------------------------------

def _prompt(q, i=0):
    return Prompt(f"p{i}", (("user", q),), "", "sort", 1)


def test_continued_trajectory_equals_uninterrupted_generation(policy):
    """Greedy, unchanged model: three segments of 8 tokens == one generation of 24."""
    model, tok = policy
    engine = HFEngine(model, tok)
    params = SamplingParams(max_new_tokens=24, temperature=0)  # no stop tokens: every segment runs its budget
    prompts = [_prompt(q, i) for i, q in enumerate(QUESTIONS[:3])]
    whole = rollout(engine, tok, prompts, 1, params)
    buffer = ReplayBuffer()
    results = []
    for it in range(3):
        results.append(partial_rollout(engine, tok, buffer, prompts if it == 0 else [], 1, params, version=it,
                                       segment_tokens=8, max_tokens=24, first_group=0))
    assert [len(r.trajectories) for r in results] == [0, 0, 3]
    assert results[0].outcomes["cut"] == 3 and results[1].continued == 3 and results[2].outcomes["max_len"] == 3
    for w, t in zip(whole, results[2].trajectories):
        assert t.response_ids == w.response_ids
        torch.testing.assert_close(torch.tensor(t.logprobs), torch.tensor(w.logprobs), atol=1e-4, rtol=0)
        assert t.versions == [0] * 8 + [1] * 8 + [2] * 8
        assert t.finish_reason == "max_len"
    assert len(buffer) == 0


def _segments_of_8(engine, tok, prompts, params, keep_kv, iterations=3, between=None):
    buffer, results = ReplayBuffer(), []
    for it in range(iterations):
        results.append(partial_rollout(engine, tok, buffer, prompts if it == 0 else [], 2, params, version=it,
                                       segment_tokens=8, max_tokens=24, first_group=0, keep_kv=keep_kv))
        if between:
            between(it)
    return results


@pytest.mark.parametrize("groups", [1, 2])
def test_kept_kv_continuation_equals_reencoding_and_skips_the_prefill(policy, groups, monkeypatch):
    """rollout.keep_kv, unchanged weights: sampled (T=1) continuations from the kept KV cache
    draw the same tokens with the same log-probs as re-encoding prompt + earlier segments,
    and the continued requests are never prefilled again (also with attention groups)."""
    from k15rl.rollout.slots import SlotCache

    monkeypatch.setattr(SlotCache, "PASS_COST", 0)  # split whenever it narrows a window (tiny model)
    model, tok = policy
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    prompts = [_prompt(q, i) for i, q in enumerate(QUESTIONS[:3])]
    counting = CountingModel(model)
    engine = HFEngine(counting, tok, attention_groups=groups)
    ref = _segments_of_8(HFEngine(model, tok, attention_groups=groups), tok, prompts, params, keep_kv=False)
    got = _segments_of_8(engine, tok, prompts, params, keep_kv=True)
    for a, b in zip(ref[2].trajectories, got[2].trajectories):
        assert a.response_ids == b.response_ids
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-4, rtol=0)
    prefills = [shape for shape in counting.calls if shape[1] > 1]  # decoding steps are [S, 1]
    assert len(prefills) == 1 and prefills[0][0] == 3  # iteration 0 only: its 6 trajectories, one row per prompt
    assert not engine._kept  # the last segments reached max_tokens: nothing left behind


def test_kept_kv_survives_an_evaluation_and_is_dropped_when_not_continued(policy):
    model, tok = policy
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=3)
    engine = HFEngine(model, tok)
    prompts = [_prompt(q, i) for i, q in enumerate(QUESTIONS[:2])]
    evaluate = lambda it: rollout(engine, tok, prompts, 2, SamplingParams(max_new_tokens=5, seed=it))  # noqa: E731
    ref = _segments_of_8(HFEngine(model, tok), tok, prompts, params, keep_kv=False)
    got = _segments_of_8(engine, tok, prompts, params, keep_kv=True, between=evaluate)
    assert [t.response_ids for t in got[2].trajectories] == [t.response_ids for t in ref[2].trajectories]
    buffer = ReplayBuffer()
    partial_rollout(engine, tok, buffer, prompts, 2, params, version=0, segment_tokens=8, max_tokens=24,
                    first_group=0, keep_kv=True)
    assert len(engine._kept) == 4  # one per cut trajectory
    partial_rollout(engine, tok, ReplayBuffer(), [_prompt("Sort: z y", 9)], 2, params, version=1, segment_tokens=8,
                    max_tokens=24, first_group=5, keep_kv=True)
    assert set(engine._kept) == {"g5m0", "g5m1"}  # the four not continued by that call are gone


def test_kept_kv_of_pulled_requests(policy):
    """Requests pulled through `more` (how Ray workers take work) keep and take KV too, and a
    call whose pulled requests keep drops what it did not take."""
    model, tok = policy
    engine = HFEngine(model, tok, max_batch=2)
    params = SamplingParams(max_new_tokens=4, temperature=0)
    p = [_ids(tok, q) for q in QUESTIONS[:3]]

    def source(reqs):
        reqs = list(reqs)
        return lambda n: [reqs.pop(0) for _ in range(min(n, len(reqs)))]

    first = engine.generate([], params, more=source(GenerationRequest(x, id=f"r{i}", keep_kv=True)
                                                   for i, x in enumerate(p)))
    assert sorted(engine._kept) == ["r0", "r1", "r2"]
    engine.generate([], params, more=source([GenerationRequest(p[0], first[0].token_ids, id="r0", keep_kv=True)]))
    assert sorted(engine._kept) == ["r0"]  # r0 continued and cut again; r1, r2 not continued: dropped


def test_kept_kv_with_another_context_is_not_used(policy):
    """A request whose context is not what the kept KV covers is prefilled as usual."""
    model, tok = policy
    engine = HFEngine(model, tok)
    p = _ids(tok, QUESTIONS[0])
    params = SamplingParams(max_new_tokens=4, temperature=0)
    first = engine.generate([GenerationRequest(p, id="x", keep_kv=True)], params)[0]
    assert list(engine._kept) == ["x"]
    other = [t + 1 for t in first.token_ids]  # same id, other tokens
    got = engine.generate([GenerationRequest(p, other, id="x")], params)[0]
    want = HFEngine(model, tok).generate([GenerationRequest(p, other)], params)[0]
    assert got.token_ids == want.token_ids


class ScriptedEngine:
    """Emits token 100+j for trajectory j until its scripted total length, then EOS (2).
    A continuation is recognised by its first token, so the script follows each trajectory."""

    def __init__(self, lengths):
        self.lengths = lengths
        self.started = 0
        self.requests = []

    def generate(self, requests, params):
        self.requests.append(requests)
        out = []
        for r in requests:
            if r.prefix_ids:
                j = r.prefix_ids[0] - 100
            else:
                j, self.started = self.started, self.started + 1
            budget = min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens)
            remaining = self.lengths[j] - len(r.prefix_ids)
            if remaining <= budget:
                toks = [100 + j] * (remaining - 1) + [2]
                out.append(Segment(toks, [-0.5] * len(toks), "stop"))
            else:
                out.append(Segment([100 + j] * budget, [-0.5] * budget, "length"))
        return out

    def load_weights(self, sd):
        pass


class FakeTok:
    def apply_chat_template(self, messages, **kw):
        return [1, 5, 6]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_group_waits_for_its_slowest_member(monkeypatch):
    monkeypatch.setattr("k15rl.rollout.collect.encode_prompt", lambda tok, msgs, images=(): [1, 5, 6])
    # group 0 = trajectories 0, 1 (lengths 5 and 20); group 1 = trajectories 2, 3 (both 5)
    engine, tok, buffer = ScriptedEngine([5, 20, 5, 5, 30, 3]), FakeTok(), ReplayBuffer()
    params = SamplingParams(max_new_tokens=100, stop_token_ids=[2])
    r0 = partial_rollout(engine, tok, buffer, [_prompt("a", 0), _prompt("b", 1)], 2, params, version=0,
                         segment_tokens=8, max_tokens=25, first_group=0)
    assert [t.group for t in r0.trajectories] == [1, 1]  # group 1 complete; group 0 waits for member 1
    assert dict(r0.outcomes) == {"stop": 3, "cut": 1}
    assert buffer.num_unfinished() == 1 and buffer.num_waiting() == 1
    # iteration 1: the cut member is continued first, then a new prompt (group 2: lengths 30, 3)
    r1 = partial_rollout(engine, tok, buffer, [_prompt("c", 2)], 2, params, version=1,
                         segment_tokens=8, max_tokens=25, first_group=2)
    assert [len(r.prefix_ids) for r in engine.requests[1]] == [8, 0, 0]
    assert r1.trajectories == [] and r1.continued == 1 and dict(r1.outcomes) == {"cut": 2, "stop": 1}
    r2 = partial_rollout(engine, tok, buffer, [], 2, params, version=2, segment_tokens=8, max_tokens=25, first_group=3)
    (a, b) = r2.trajectories  # group 0 released: its early member waited two iterations
    assert (a.group, b.group) == (0, 0)
    assert (a.num_tokens, a.finish_reason, set(a.versions)) == (5, "stop", {0})
    assert (b.num_tokens, b.finish_reason, b.versions) == (20, "stop", [0] * 8 + [1] * 8 + [2] * 4)
    assert buffer.num_unfinished() == 1  # group 2's long member: 16 tokens so far
    r3 = partial_rollout(engine, tok, buffer, [], 2, params, version=3, segment_tokens=8, max_tokens=25, first_group=3)
    assert dict(r3.outcomes) == {"cut": 1} and r3.trajectories == []  # 24 tokens
    r4 = partial_rollout(engine, tok, buffer, [], 2, params, version=4, segment_tokens=8, max_tokens=25, first_group=3)
    assert engine.requests[-1][0].max_new_tokens == 1  # the budget is capped by the room left
    assert dict(r4.outcomes) == {"max_len": 1}
    assert [(t.num_tokens, t.finish_reason) for t in r4.trajectories] == [(25, "max_len"), (3, "stop")]
    assert len(buffer) == 0


def test_replay_buffer_round_trips_through_json():
    buf = ReplayBuffer()
    p = Prompt("id7", (("system", "s"), ("user", "q")), "42", "arith", 3, {"ops": 2})
    buf.add_group([Member(p, 4, [1, 2], [3, 4], [-0.1, -0.2], [0, 1]), Member(p, 4, [1, 2], [5], [-1.0], [1], "stop")])
    restored = ReplayBuffer()
    restored.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert restored.groups == buf.groups
    assert restored.num_unfinished() == 1 and restored.num_waiting() == 1


def test_stale_tokens_masked_or_kept():
    from k15rl.types import Trajectory

    p = Prompt("x", (("user", "q"),), "1", "integer")
    t = Trajectory(p, 0, [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], "stop", versions=[3, 3, 4])
    u = Trajectory(p, 0, [1, 2], [6, 7], [-0.4, -0.5], "stop")  # no versions: sampled by the current policy
    keep = make_train_batch([t, u], 0, version=4, train_on_stale=True)
    drop = make_train_batch([t, u], 0, version=4, train_on_stale=False)
    assert keep.stale.tolist() == [[True, True, False], [False, False, False]]
    assert keep.loss_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert drop.loss_mask.tolist() == [[0, 0, 1], [1, 1, 0]]


@pytest.mark.parametrize("train_on_stale", [True, False])
def test_update_reference_for_stale_tokens(policy, train_on_stale):
    """Stale tokens' recorded log-probs come from an older policy; when they count in the
    loss, the trainer replaces them with pi_i's (its own recomputation)."""
    from k15rl.trainer.logprobs import collate, token_logprobs
    from k15rl.config import AlgorithmConfig
    from k15rl.trainer.update import PolicyTrainer, UpdatePlan
    from k15rl.types import Trajectory

    model, tok = policy
    p = Prompt("x", (("user", "q"),), "1", "integer")
    ids = _ids(tok, "Hi")
    trajs = [Trajectory(p, 0, ids, [5, 6, 7], [-9.0, -9.0, -9.0], "stop", reward=1.0, versions=[0, 0, 1]),
             Trajectory(p, 0, ids, [8, 9], [-9.0, -9.0], "stop", versions=[1, 1])]
    seen = {}

    def spy_loss(logp, old, rewards, mask, group_ids):
        seen["old"], seen["mask"] = old.clone(), mask.clone()
        return (logp * mask).sum() * 0.0, {}

    with torch.no_grad():
        ref = token_logprobs(model, collate([ids, ids], [[5, 6, 7], [8, 9]], tok.pad_token_id))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = UpdatePlan(spy_loss, AlgorithmConfig(lr=0.0), 1.0, train_on_stale, tok.pad_token_id)
    PolicyTrainer(model, plan).update(trajs, version=1, seed=0)
    model.load_state_dict(before)
    if train_on_stale:
        torch.testing.assert_close(seen["old"][0, :2], ref[0, :2])  # stale: pi_i recomputed
        assert seen["mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    else:
        assert seen["old"][0, :2].tolist() == [-9.0, -9.0]
        assert seen["mask"].tolist() == [[0, 0, 1], [1, 1, 0]]
    assert seen["old"][0, 2].item() == -9.0 and seen["old"][1, :2].tolist() == [-9.0, -9.0]  # fresh: as sampled


def test_requests_sharing_a_prompt_are_prefilled_once(policy):
    """The K samples of a group share their prompt: it is prefilled in one row and its KV
    written into each of their slots; greedy tokens and their log-probs equal those of each
    request prefilled alone."""
    model, tok = policy
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    p, q = _ids(tok, "Hi"), _ids(tok, "Sort these letters: c a b")
    counting = CountingModel(model)
    segs = HFEngine(counting, tok).generate([GenerationRequest(x) for x in (p, q, p, p, q)], params)
    assert [b for b, t in counting.calls if t > 1] == [2]  # one prefill, one row per distinct prompt
    assert len(segs) == 5 and all(len(s.logprobs) == len(s.token_ids) > 0 for s in segs)
    one = HFEngine(model, tok)
    greedy = HFEngine(model, tok).generate([GenerationRequest(x) for x in (p, q, p)],
                                            SamplingParams(max_new_tokens=12, temperature=0.0))
    for x, s in zip((p, q, p), greedy):
        alone = one.generate([GenerationRequest(x)], SamplingParams(max_new_tokens=12, temperature=0.0))[0]
        assert s.token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


# -- the iteration's output-token budget (rollout.iteration_tokens) --------------------

def test_token_budget_cuts_what_runs_and_leaves_the_rest_unstarted(policy):
    """Greedy: a call with a token budget cuts the sequences in flight once its slots have
    sampled that many tokens, and gives requests never admitted an empty segment; continuing
    the cut ones and starting the others yields exactly the uninterrupted generations."""
    model, tok = policy
    prompts = [_ids(tok, q) for q in QUESTIONS]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    whole = HFEngine(model, tok, max_batch=2).generate([GenerationRequest(p) for p in prompts], params)
    engine = HFEngine(model, tok, max_batch=2)
    first = engine.generate([GenerationRequest(p) for p in prompts], params, token_budget=15)
    spent = sum(len(s.token_ids) for s in first)
    assert 15 <= spent <= 15 + 2 - 1  # overshoot: at most the slots' count minus one
    assert all(s.finish_reason == "length" for s in first if len(s.token_ids) < 12)
    assert not first[-1].token_ids  # the last request never got a slot
    rest = engine.generate([GenerationRequest(p, s.token_ids, max_new_tokens=12 - len(s.token_ids))
                            for p, s in zip(prompts, first)], params)
    for w, a, b in zip(whole, first, rest):
        assert a.token_ids + b.token_ids == w.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs + b.logprobs), torch.tensor(w.logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("keep_kv", [False, True])
def test_partial_rollout_with_a_token_budget(policy, keep_kv):
    """rollout.iteration_tokens: every unfinished trajectory is handed to the engine, more
    than its slots; each iteration samples about the budget, those not started wait in the
    buffer, and once the buffer drains every trajectory equals its uninterrupted greedy
    generation (also when continued from kept KV)."""
    model, tok = policy
    params = SamplingParams(max_new_tokens=24, temperature=0)
    prompts = [_prompt(q, i) for i, q in enumerate(QUESTIONS[:3])]
    whole = rollout(HFEngine(model, tok, max_batch=2), tok, prompts, 2, params)
    engine, buffer = HFEngine(model, tok, max_batch=2), ReplayBuffer()
    results = [partial_rollout(engine, tok, buffer, prompts, 2, params, version=0, segment_tokens=0, max_tokens=24,
                               first_group=0, keep_kv=keep_kv, token_budget=10)]
    assert results[0].not_started > 0 and buffer.num_unfinished() == 6 - len(results[0].trajectories)
    assert 10 <= results[0].tokens_generated <= 11
    while len(buffer):
        results.append(partial_rollout(engine, tok, buffer, [], 2, params, version=len(results), segment_tokens=0,
                                       max_tokens=24, first_group=3, keep_kv=keep_kv, token_budget=10))
        assert len(results) < 30
    got = sorted((t for r in results for t in r.trajectories), key=lambda t: t.group)  # stable: members in order
    assert [(t.group, t.prompt.id) for t in got] == [(t.group, t.prompt.id) for t in whole]
    for t, w in zip(got, whole):
        assert t.response_ids == w.response_ids and t.finish_reason == w.finish_reason
        torch.testing.assert_close(torch.tensor(t.logprobs), torch.tensor(w.logprobs), atol=1e-4, rtol=0)
    assert sum(r.tokens_generated for r in results) == sum(len(t.response_ids) for t in got)
