"""The rollout engine: exact sampling distribution, greedy parity with HF, log-probs."""

import math

import pytest
import torch

from k15rl.models.loading import encode_prompt, load_model, load_tokenizer
from k15rl.rollout.engine import HFEngine, SamplingParams, sample_token
from k15rl.trainer.logprobs import collate, token_logprobs
from k15rl.types import GenerationRequest


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def _prompts(tok):
    qs = ["Rules: a->b b->a. Start at a and make 1 hops.", "Compute 12+7.", "Rules: c->d d->c. Start at d and make 2 hops."]
    return [encode_prompt(tok, (("user", q),)) for q in qs]


def test_greedy_equals_hf_generate(policy):
    model, tok = policy
    prompts = _prompts(tok)
    engine = HFEngine(model, tok, max_batch=2)  # two chunks, mixed lengths: left padding exercised
    segs = engine.generate([GenerationRequest(p) for p in prompts], SamplingParams(max_new_tokens=12, temperature=0))
    for p, seg in zip(prompts, segs):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert seg.token_ids == ref


def test_prefill_in_chunks_changes_nothing(policy):
    """A prefill budget of one row at a time (each chunk its own padding, the slot cache as
    wide as the widest context of all) samples the same tokens with the same log-probs."""
    model, tok = policy
    prompts = _prompts(tok) * 2
    params = SamplingParams(max_new_tokens=10, temperature=0.9, seed=4)
    whole = HFEngine(model, tok, max_batch=6).generate([GenerationRequest(p) for p in prompts], params)
    chunked = HFEngine(model, tok, max_batch=6, prefill_tokens=1).generate([GenerationRequest(p) for p in prompts],
                                                                          params)
    assert [s.token_ids for s in chunked] == [s.token_ids for s in whole]
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


def test_first_token_distribution_matches_softmax(policy):
    model, tok = policy
    p = _prompts(tok)[1]
    T = 1.7
    with torch.no_grad():
        logits = model(torch.tensor([p])).logits[0, -1]
    probs = torch.softmax(logits / T, -1)
    n = 4000
    engine = HFEngine(model, tok, max_batch=n)
    segs = engine.generate([GenerationRequest(p)] * n, SamplingParams(max_new_tokens=1, temperature=T, seed=1))
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in segs]), minlength=probs.numel()).float()
    # total variation distance between empirical and exact distribution
    tv = 0.5 * (counts / n - probs).abs().sum().item()
    # expected TV for multinomial noise is about sum sqrt(p(1-p)/n) / 2 * sqrt(2/pi)
    noise = 0.5 * math.sqrt(2 / math.pi) * (probs * (1 - probs) / n).sqrt().sum().item()
    assert tv < 2 * noise + 0.01, (tv, noise)


def test_top_p_keeps_smallest_set():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_token(logits, 1.0, 0.75, g)[0]) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 >= 0.75: tokens 2 and 3 never drawn


def test_logprobs_match_trainer_recomputation(policy):
    model, tok = policy
    prompts = _prompts(tok)
    engine = HFEngine(model, tok, max_batch=8)
    params = SamplingParams(max_new_tokens=10, temperature=0.8, seed=3, stop_token_ids=[tok.eos_token_id])
    segs = engine.generate([GenerationRequest(p) for p in prompts], params)
    batch = collate(prompts, [s.token_ids for s in segs], tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch, temperature=0.8)
    for i, s in enumerate(segs):
        torch.testing.assert_close(lp[i, : len(s.token_ids)], torch.tensor(s.logprobs), atol=1e-4, rtol=1e-4)


def test_seeded_sampling_is_reproducible(policy):
    model, tok = policy
    engine = HFEngine(model, tok)
    reqs = [GenerationRequest(p) for p in _prompts(tok)]
    a = engine.generate(reqs, SamplingParams(max_new_tokens=8, seed=5))
    b = engine.generate(reqs, SamplingParams(max_new_tokens=8, seed=5))
    assert [s.token_ids for s in a] == [s.token_ids for s in b]


def test_stop_strings_and_length(policy):
    model, tok = policy
    engine = HFEngine(model, tok)
    p = _prompts(tok)[0]
    free = engine.generate([GenerationRequest(p)], SamplingParams(max_new_tokens=20, temperature=0))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    text = tok.decode(free.token_ids[:3])
    stopped = engine.generate([GenerationRequest(p)], SamplingParams(max_new_tokens=20, temperature=0,
                                                                     stop_strings=[text[-1]]))[0]
    assert stopped.finish_reason == "stop" and len(stopped.token_ids) <= 3


# -- attention groups (rollout.attention_groups, k15rl/rollout/slots.py) ------------------

def _slot_cache(first_columns: list[int], end: int):
    """A SlotCache of len(first_columns) slots whose slot j holds columns [first_j, end)."""
    from k15rl.rollout.slots import SlotCache

    kv = SlotCache(len(first_columns), 1, 1, 2, torch.float32, columns=end + 4, end=end)
    kv.start = min(first_columns)
    for j, f in enumerate(first_columns):
        kv.mask[j, f:end] = 1
    return kv


def test_groups_and_repack_order_by_hand(monkeypatch):
    """Slots using columns from 0, 8, 1, 8 to 10: two groups of two read 2 x 11 + 2 x 10 = 42
    columns a step; sorted by first column (0, 1 | 8, 8) 2 x 11 + 2 x 3 = 28, a gain of 14
    over the 0.125 x 4 x 11 = 5.5 that a repack must beat. A pass costing more than the
    columns a split saves keeps one group."""
    from k15rl.rollout.slots import SlotCache

    kv = _slot_cache([0, 8, 1, 8], end=10)
    live = torch.ones(4, dtype=torch.bool)
    monkeypatch.setattr(SlotCache, "PASS_COST", 3)  # one group: 44 + 3 = 47 < two: 42 + 6 = 48
    assert kv.groups(live, 2) == [(0, 4, 0)]
    monkeypatch.setattr(SlotCache, "PASS_COST", 1)  # two groups: 42 + 2 = 44 < one: 44 + 1 = 45
    assert kv.groups(live, 2) == [(0, 2, 0), (2, 4, 1)]
    monkeypatch.setattr(SlotCache, "PASS_COST", 0)
    assert kv.groups(live, 1) == [(0, 4, 0)]
    assert kv.groups(live, 2) == [(0, 2, 0), (2, 4, 1)]
    assert kv.window_cost(live, 2) == 42
    assert kv.repack_order(live, 2).tolist() == [0, 2, 1, 3]
    kv.keep(kv.repack_order(live, 2))
    assert kv.groups(live, 2) == [(0, 2, 0), (2, 4, 8)] and kv.window_cost(live, 2) == 28
    assert kv.repack_order(live, 2) is None  # sorted already
    assert kv.repack_order(live, 1) is None
    dead = torch.tensor([True, True, False, False])  # a group without live slots reads only the new column
    assert kv.groups(dead, 2) == [(0, 2, 0), (2, 4, 10)]


@pytest.mark.parametrize("groups", [2, 3])
def test_attention_groups_change_nothing(policy, monkeypatch, groups):
    """Greedy: decoding with the slots' attention split into groups, each over its own
    window, with repacks as slots refill, gives the tokens and log-probs of one shared
    window; the model's attention layers really ran split, over windows narrower than the
    shared one at some steps (the test exercises what it is about)."""
    from k15rl.rollout import slots
    from k15rl.rollout.slots import SlotCache

    model, tok = policy
    qs = ["Compute 12+7.", "Sort: d b a c", "Rules: a->b b->a. Start at a and make 3 hops.", "Hi",
          "Sort: q w e r t y", "Compute 3+4.", "Sort: z y", "Rules: c->d d->c. Start at d and make 2 hops."]
    reqs = [GenerationRequest(encode_prompt(tok, (("user", q),)), max_new_tokens=b)
            for q, b in zip(qs * 2, [30, 3, 25, 4, 6, 28, 2, 5, 7, 3, 26, 9, 4, 8, 3, 6])]
    params = SamplingParams(max_new_tokens=30, temperature=0)
    ref = HFEngine(model, tok, max_batch=6).generate(reqs, params)
    narrower, attend = [], slots._grouped_sdpa

    def spy(module, query, key, value, mask, **kw):
        split = slots._GROUPS.get()
        if split is not None:
            narrower.append(any(o > 0 for _, _, o in split))
        return attend(module, query, key, value, mask, **kw)

    monkeypatch.setattr(slots, "_grouped_sdpa", spy)
    monkeypatch.setattr(SlotCache, "PASS_COST", 0)  # split whenever it narrows a window (tiny model)
    got = HFEngine(model, tok, max_batch=6, attention_groups=groups).generate(reqs, params)
    assert [s.token_ids for s in got] == [s.token_ids for s in ref]
    for a, b in zip(got, ref):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    assert any(narrower)
    assert model.config._attn_implementation != slots.GROUPED  # restored after each step


def test_attention_groups_logprobs_match_trainer_recomputation(policy, monkeypatch):
    """Sampled with attention groups: the recorded log-probs are the trainer's for the same tokens."""
    from k15rl.rollout.slots import SlotCache

    monkeypatch.setattr(SlotCache, "PASS_COST", 0)
    model, tok = policy
    prompts = _prompts(tok) * 3
    engine = HFEngine(model, tok, max_batch=4, attention_groups=2)
    params = SamplingParams(max_new_tokens=16, temperature=0.8, seed=3, stop_token_ids=[tok.eos_token_id])
    segs = engine.generate([GenerationRequest(p, max_new_tokens=4 + 3 * i) for i, p in enumerate(prompts)], params)
    batch = collate(prompts, [s.token_ids for s in segs], tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch, temperature=0.8)
    for i, s in enumerate(segs):
        torch.testing.assert_close(lp[i, : len(s.token_ids)], torch.tensor(s.logprobs), atol=1e-4, rtol=1e-4)


def test_many_requests_through_few_slots_reuse_the_buffer(policy, monkeypatch):
    """Greedy: 48 requests through 3 slots give the tokens and log-probs of all 48 decoded
    at once, and the slot buffer does not grow with the number of requests: its window
    moves back to column 0 in place (`_slide`), and it never holds more than 1.5 windows
    + 64 columns (a window here is at most the longest prompt + 12 new tokens + 1)."""
    from k15rl.rollout.slots import SlotCache

    model, tok = policy
    prompts = _prompts(tok) * 16
    reqs = [GenerationRequest(p, max_new_tokens=4 + i % 9) for i, p in enumerate(prompts)]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    ref = HFEngine(model, tok, max_batch=len(reqs)).generate(reqs, params)
    seen, slides, slide = [], [], SlotCache._slide

    def spy(self):
        slides.append(self.end - self.start)
        slide(self)

    step_mask = SlotCache.step_mask
    monkeypatch.setattr(SlotCache, "_slide", spy)
    monkeypatch.setattr(SlotCache, "step_mask", lambda self, live: (seen.append(self.columns), step_mask(self, live))[1])
    got = HFEngine(model, tok, max_batch=3).generate(reqs, params)
    assert [s.token_ids for s in got] == [s.token_ids for s in ref]
    for a, b in zip(got, ref):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    window = max(len(p) for p in prompts) + 12 + 1
    assert slides and max(seen) <= window + max(64, window // 2)


def test_evaluation_in_chunks_of_max_batch(policy):
    """eval.max_batch: 7 prompts x 2 samples with max_batch 4 reach the engine as chunks of
    2 prompts (4 samples) at most; greedy, they give the tokens of one call, in order, with
    each prompt's group id; sampled, the chunks draw with seeds of their own."""
    from k15rl.trainer.evaluate import evaluate
    from k15rl.types import Prompt

    model, tok = policy
    prompts = [Prompt(f"p{i}", (("user", f"Compute {i}+{i + 3}."),), answer=str(2 * i + 3), task="arith", level=1)
               for i in range(7)]
    calls = []

    class Spy(HFEngine):
        def generate(self, requests, params, more=None):
            calls.append((len(requests), params.seed))
            return super().generate(requests, params, more)

    engine = Spy(model, tok, max_batch=16)
    greedy = SamplingParams(max_new_tokens=6, temperature=0, seed=5)
    whole, whole_t = evaluate(engine, tok, prompts, greedy, samples_per_prompt=2)
    chunked, chunked_t = evaluate(engine, tok, prompts, greedy, samples_per_prompt=2, max_batch=4)
    assert calls[0] == (14, 5) and calls[1:] == [(4, 5), (4, 5 + 1000003), (4, 5 + 2 * 1000003), (2, 5 + 3 * 1000003)]
    assert [t.response_ids for t in chunked_t] == [t.response_ids for t in whole_t]
    assert [t.group for t in chunked_t] == [t.group for t in whole_t] == [i // 2 for i in range(14)]
    assert chunked["n"] == whole["n"] == 14
