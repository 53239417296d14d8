"""The training phase: micro-batching is exact, mini-batches hold whole groups."""

import copy
import functools

import torch

from functools import partial

import pytest

from k15rl.algorithms import k15_loss
from k15rl.config import AlgorithmConfig
from k15rl.models.loading import load_model, load_tokenizer
from k15rl.rollout.collect import rollout
from k15rl.rollout.engine import HFEngine, SamplingParams
from k15rl.tasks import get_task, make_prompts
from k15rl.trainer.logprobs import token_logprobs
from k15rl.distributed.shard import Shard
from k15rl.trainer.update import (LogprobPasses, PolicyTrainer, UpdatePlan, enable_activation_checkpointing, lr_at,
                                  make_train_batch, micro_batches, shard_passes)


def _trajectories(model, tok, n_prompts=3, k=4):
    prompts = make_prompts(get_task("hops"), "train", n_prompts, (2,), seed=0)
    trajs = rollout(HFEngine(model, tok), tok, prompts, k, SamplingParams(max_new_tokens=12, seed=0))
    for i, t in enumerate(trajs):  # rewards with spread inside every group
        t.reward = float(i % 3 == 0)
    return trajs


def _grad(model, batch, micro: int, norm: str) -> torch.Tensor:
    """The parameter gradient of the k1.5 loss over `batch` through LogprobPasses."""
    model.zero_grad()
    passes = LogprobPasses(model, batch.tokens, micro, 1.0, False)
    logp = passes.logprobs()  # [N, T]
    loss, _ = k15_loss(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, tau=0.5,
                       normalization=norm)
    loss.backward()
    passes.backward(logp.grad)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_micro_batching_gives_the_same_gradient(tiny_model_dir, norm):
    """One pass, uneven micro-batches splitting groups, one row each: the gradient of plain
    autograd through one forward over the whole batch (the reference; each distinct prompt
    once, as the update runs it: `test_shared_prompts_give_the_plain_logprobs_and_gradient`)."""
    from k15rl.trainer.logprobs import shares_prompts

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    batch = make_train_batch(trajs, tok.pad_token_id)
    batch.old_logprobs = batch.old_logprobs - 0.1  # make the l2 term non-trivial
    model.zero_grad()
    logp = token_logprobs(model, batch.tokens, share_prompts=shares_prompts(model))
    loss, _ = k15_loss(logp, batch.old_logprobs, batch.rewards, batch.loss_mask,
                       batch.group_ids, tau=0.5, normalization=norm)
    loss.backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(_grad(model, batch, len(trajs), norm), reference, atol=0, rtol=0)  # one pass: exact
    torch.testing.assert_close(_grad(model, batch, 5, norm), reference, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(_grad(model, batch, 1, norm), reference, atol=1e-6, rtol=1e-4)


def test_update_moves_logprobs_of_rewarded_samples_up(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    before = make_train_batch(trajs, tok.pad_token_id)
    ref = copy.deepcopy(model)
    plan = UpdatePlan(partial(k15_loss, tau=0.01), AlgorithmConfig(lr=3e-3, minibatches=3), 1.0, True, tok.pad_token_id)
    metrics = PolicyTrainer(model, plan).update(trajs, version=0, seed=0)
    assert metrics["train/steps"] == 3
    with torch.no_grad():
        old = (token_logprobs(ref, before.tokens) * before.tokens.response_mask).sum(-1)
        new = (token_logprobs(model, before.tokens) * before.tokens.response_mask).sum(-1)
    adv = before.rewards - torch.stack([before.rewards[before.group_ids == g].mean() for g in before.group_ids])
    delta = new - old
    assert delta[adv > 0].mean() > 0 > delta[adv < 0].mean()


def _grad_tokens(model, batch, max_tokens: int, norm: str = "sequence") -> torch.Tensor:
    """_grad with micro-batches by token count (algorithm.micro_batch_tokens)."""
    model.zero_grad()
    passes = LogprobPasses(model, batch.tokens, 10**6, 1.0, False, max_tokens=max_tokens)
    logp = passes.logprobs()  # [N, T]
    loss, _ = k15_loss(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, tau=0.5,
                       normalization=norm)
    loss.backward()
    passes.backward(logp.grad)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_token_micro_batches_hold_at_most_the_budget(tiny_model_dir):
    """Every row in exactly one micro-batch; each one's padded size (rows x longest row)
    within the budget unless it is one row longer than the budget."""
    tok = load_tokenizer(tiny_model_dir)
    batch = make_train_batch(_trajectories(load_model(tiny_model_dir), tok), tok.pad_token_id)
    lengths = batch.tokens.attention_mask.sum(1).tolist()
    for budget in (1, max(lengths), 2 * max(lengths) + 3, 100, sum(lengths)):
        chunks = micro_batches(batch.tokens, 64, max_tokens=budget)
        assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
        assert all(len(c) * max(lengths[i] for i in c) <= budget or len(c) == 1 for c in chunks)
    assert len(micro_batches(batch.tokens, 64, max_tokens=1)) == len(lengths)
    assert micro_batches(batch.tokens, 64, max_tokens=len(lengths) * max(lengths)) == [list(range(len(lengths)))]


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_token_micro_batches_give_the_same_gradient(tiny_model_dir, norm):
    """Micro-batches by token count: one pass (a budget holding the batch) is bitwise the
    rows' one pass; a budget of about two rows and one of a token (every row alone) equal
    it to float tolerance, as row micro-batches do."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    batch = make_train_batch(trajs, tok.pad_token_id)
    batch.old_logprobs = batch.old_logprobs - 0.1
    reference = _grad(model, batch, len(trajs), norm)
    L = batch.tokens.input_ids.shape[1]
    torch.testing.assert_close(_grad_tokens(model, batch, len(trajs) * L, norm), reference, atol=0, rtol=0)
    assert len(micro_batches(batch.tokens, 64, max_tokens=2 * L)) > 2
    torch.testing.assert_close(_grad_tokens(model, batch, 2 * L, norm), reference, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(_grad_tokens(model, batch, 1, norm), reference, atol=1e-6, rtol=1e-4)


def test_token_micro_batches_keep_shard_passes_balanced(tiny_model_dir):
    """Every rank runs the same number of passes (FSDP2's collectives), its own rows once
    each; the ranks' rows together are the batch."""
    tok = load_tokenizer(tiny_model_dir)
    batch = make_train_batch(_trajectories(load_model(tiny_model_dir), tok, n_prompts=5, k=3), tok.pad_token_id)
    N = len(batch.tokens)
    for W, budget in ((2, 1), (2, 40), (3, 60), (4, 10**6), (16, 30)):
        passes = [shard_passes(batch.tokens, 64, Shard(r, W), budget) for r in range(W)]
        assert len({len(p) for p in passes}) == 1, (W, budget)
        for r, p in enumerate(passes):
            assert sorted(i for c in p for i in c) == Shard(r, W).rows(N)
    assert [len(shard_passes(batch.tokens, 4, Shard(r, 2))) for r in range(2)] == [2, 2]  # by rows as before


def _checkpointing(model) -> bool:
    name = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name))


def test_activation_checkpointing_gives_the_same_update(tiny_model_dir, monkeypatch):
    """algorithm.activation_checkpointing: the same gradient (recomputed activations) and
    the same update as without. Both on plain passes (checkpointing turns the shared-prompt
    passes off): the same arithmetic but the recomputation, so the same numbers to the
    last bits, which AdamW's first step (g / |g| for tiny g) would otherwise amplify."""
    import k15rl.trainer.update as update_mod

    monkeypatch.setattr(update_mod, "shares_prompts", lambda model: False)
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    batch = make_train_batch(trajs, tok.pad_token_id)
    batch.old_logprobs = batch.old_logprobs - 0.1
    model.train()
    reference = _grad(model, batch, 5, "sequence")
    enable_activation_checkpointing(model)
    assert _checkpointing(model)
    torch.testing.assert_close(_grad(model, batch, 5, "sequence"), reference, atol=1e-6, rtol=1e-5)
    results = []
    for ckpt in (False, True):
        m = load_model(tiny_model_dir)
        plan = UpdatePlan(partial(k15_loss, tau=0.5), AlgorithmConfig(lr=1e-3, minibatches=3, micro_batch=2,
                          activation_checkpointing=ckpt), 1.0, True, tok.pad_token_id)
        metrics = PolicyTrainer(m, plan).update(trajs, version=0, seed=0)
        assert _checkpointing(m) == ckpt
        results.append((metrics, torch.cat([p.detach().flatten() for p in m.parameters()])))
    assert results[0][0]["loss/policy"] == pytest.approx(results[1][0]["loss/policy"], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("per_row", [True, False])
def test_logprobs_from_the_kept_logits_equal_the_full_logits(tiny_model_dir, monkeypatch, per_row):
    """token_logprobs runs the head only where it is needed (logits_to_keep): on each row's
    response-predicting positions where the model takes per-row positions (transformers
    5.x), else from the first such position on. Either way the log-probs equal those taken
    from the model's full [N, L, V] logits by hand, and their gradients match, with prompts
    of different lengths, an empty response, and padding."""
    import k15rl.trainer.logprobs as lp_mod
    from k15rl.trainer.logprobs import collate

    assert lp_mod._keeps_logits_at(load_model(tiny_model_dir))  # the tiny Llama slices per row
    if not per_row:
        monkeypatch.setattr(lp_mod, "_keeps_logits_at", lambda model: False)
    model = load_model(tiny_model_dir)
    prompts, responses = [[5, 6, 7, 8, 9, 10], [5, 6, 7], [5, 6, 7, 8]], [[11, 12], [13, 14, 15, 16], []]
    batch = collate(prompts, responses, pad_id=0)
    calls, forward = [], model.forward

    @functools.wraps(forward)
    def recording(*args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return forward(*args, **kwargs)

    model.forward = recording
    got = token_logprobs(model, batch, temperature=0.7)  # [3, 4]
    if per_row:
        assert len(calls) == 1 and torch.equal(calls[0], batch.gather_idx)
    else:
        assert calls == [batch.input_ids.shape[1] - 2]  # from position 2, the shortest prompt's last token
    full = torch.log_softmax(forward(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                             .logits.float() / 0.7, -1)  # [3, L, V]
    want = torch.zeros(3, 4)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        for t, tok in enumerate(r):
            want[i, t] = full[i, len(p) - 1 + t, tok]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.equal(got[2], torch.zeros(4)) and got[1].ne(0).all()
    weights = torch.arange(12.0).view(3, 4)  # any d loss / d logp
    g_got = torch.autograd.grad((got * weights).sum(), list(model.parameters()), allow_unused=True)
    g_want = torch.autograd.grad((want * weights).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g_got, g_want):
        assert (a is None) == (b is None)
        if a is not None:  # rounding only (the fused head sums the softmax in another order)
            assert float((a - b).norm()) <= 1e-6 * float(b.norm()) + 1e-7


def test_token_chunks_are_the_cheapest_within_the_budget():
    """On random long-tailed lengths, token_chunks costs no more than any partition of the
    rows into contiguous runs of the length-sorted order that fits the budget (all
    enumerated, one pass among them), and every chunk fits."""
    import itertools
    import random

    from k15rl.trainer.update import token_chunks

    def cost(chunks, lengths, p=8):
        if len(chunks) == 1:
            return 3 * (len(chunks[0]) * max(lengths[i] for i in chunks[0]) + p)
        return 4 * sum(len(c) * max(lengths[i] for i in c) + p for c in chunks)

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 7)
        lengths = [int(rng.paretovariate(1.2) * 20) for _ in range(n)]
        budget = rng.choice([max(lengths), 2 * max(lengths), n * max(lengths), sum(lengths)])
        got = token_chunks(list(range(n)), lengths, budget, pass_tokens=8)
        assert sorted(i for c in got for i in c) == list(range(n))
        assert all(len(c) * max(lengths[i] for i in c) <= budget or len(c) == 1 for c in got)
        order = sorted(range(n), key=lambda i: lengths[i])
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, n))], lengths)
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k)
                   if all((b - a) * lengths[order[b - 1]] <= budget or b - a == 1
                          for a, b in zip((0, *cuts), (*cuts, n))))
        assert cost(got, lengths) <= best


def _heavy_tailed_batch(tok, vocab: int):
    """Trajectories of 4 groups whose responses run from 2 to 60 tokens (a long tail), with
    rewards that differ inside every group and old log-probs away from the current ones."""
    import random

    from k15rl.types import Prompt, Trajectory

    rng = random.Random(0)
    lengths = [2, 3, 5, 60, 4, 40, 6, 3, 7, 9, 55, 2, 5, 8, 3, 30]
    trajs = [Trajectory(Prompt(f"p{i // 4}", (("user", "?"),), "", "t"), i // 4,
                        [rng.randrange(5, vocab) for _ in range(3 + i % 3)],
                        [rng.randrange(5, vocab) for _ in range(n)], [-2.0] * n, "stop", reward=float(i % 2))
             for i, n in enumerate(lengths)]
    return make_train_batch(trajs, tok.pad_token_id)


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_length_passes_keep_their_graphs_and_give_the_same_gradient(tiny_model_dir, norm):
    """A batch that fits one micro-batch runs as passes of rows of similar length, each
    keeping its graph: several passes, one forward each (no recomputation), at most the
    one pass's padded tokens, and the gradient of one plain forward over the whole batch."""
    from k15rl.distributed.shard import ONE_RANK
    from k15rl.trainer.update import length_passes

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    batch = _heavy_tailed_batch(tok, model.config.vocab_size)
    lengths = batch.tokens.attention_mask.sum(1).tolist()
    passes = length_passes(batch.tokens, ONE_RANK)
    assert len(passes) > 1 and sorted(i for p in passes for i in p) == list(range(len(lengths)))
    padded = sum(len(p) * max(lengths[i] for i in p) for p in passes)
    assert padded < 0.5 * len(lengths) * max(lengths)  # one pass: 16 x 66 tokens, mostly padding
    model.zero_grad()
    loss, _ = k15_loss(token_logprobs(model, batch.tokens), batch.old_logprobs, batch.rewards, batch.loss_mask,
                       batch.group_ids, tau=0.5, normalization=norm)
    loss.backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters()])
    calls, forward = [], model.forward

    @functools.wraps(forward)
    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return forward(*args, **kwargs)

    model.forward = counting
    got = _grad(model, batch, len(lengths), norm)
    assert len(calls) == len(passes)  # graphs kept: no recomputing forward (no prompt repeats: plain passes)
    assert float((got - reference).norm()) <= 1e-5 * float(reference.norm())  # rounding only


def test_length_passes_keep_shard_passes_balanced(tiny_model_dir):
    """FSDP2 ranks split their own rows by length, and run as many passes as the rank with
    the most (padded with empty ones)."""
    from k15rl.trainer.update import length_passes

    tok = load_tokenizer(tiny_model_dir)
    batch = _heavy_tailed_batch(tok, load_model(tiny_model_dir).config.vocab_size)
    N = len(batch.tokens)
    for W in (2, 3, 16, 20):
        passes = [length_passes(batch.tokens, Shard(r, W)) for r in range(W)]
        assert len({len(p) for p in passes}) == 1, W
        for r, p in enumerate(passes):
            assert sorted(i for c in p for i in c) == Shard(r, W).rows(N)


def _shared_prompt_batch(tok, vocab: int):
    """4 groups of 4 samples sharing their prompt (1, 3, 7 and 12 tokens: one with no
    prefix before its last token), responses of 0 to 20 tokens."""
    import random

    from k15rl.types import Prompt, Trajectory

    rng = random.Random(1)
    prompts = [[rng.randrange(5, vocab) for _ in range(n)] for n in (1, 3, 7, 12)]
    lengths = [3, 0, 20, 5, 1, 2, 9, 4, 15, 6, 2, 11, 7, 7, 1, 19]
    trajs = [Trajectory(Prompt(f"p{i // 4}", (("user", "?"),), "", "t"), i // 4, prompts[i // 4],
                        [rng.randrange(5, vocab) for _ in range(n)], [-2.0] * n, "stop", reward=float(i % 3 == 0))
             for i, n in enumerate(lengths)]
    return make_train_batch(trajs, tok.pad_token_id)


def test_shared_prompts_give_the_plain_logprobs_and_gradient(tiny_model_dir):
    """token_logprobs with each distinct prompt run once (its rows' responses on its keys and
    values): the log-probs and the k1.5 loss's gradient of one plain forward over [prompt,
    response] rows, at temperature 1 and below; two forwards, the first over the 4 distinct
    prompts only."""
    from k15rl.trainer.logprobs import shares_prompts

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    assert shares_prompts(model)
    batch = _shared_prompt_batch(tok, model.config.vocab_size)
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            plain = token_logprobs(model, batch.tokens, temperature)
            shared = token_logprobs(model, batch.tokens, temperature, share_prompts=True)
        torch.testing.assert_close(shared, plain, atol=2e-5, rtol=0)
        assert torch.equal(shared == 0, plain == 0)
    grads = []
    calls, forward = [], model.forward

    @functools.wraps(forward)
    def counting(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = counting
    for share in (False, True):
        model.zero_grad()
        logp = token_logprobs(model, batch.tokens, share_prompts=share)
        loss, _ = k15_loss(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, tau=0.5)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float((grads[1] - grads[0]).norm()) <= 1e-5 * float(grads[0].norm())  # rounding only
    assert calls[1:] == [(4, 11), (16, 21)]  # the prompts but their last token (at most 11), then the rows
    calls.clear()
    token_logprobs(model, batch.tokens.select([0, 4, 8, 12]), share_prompts=True)  # no prompt twice
    assert calls == [(4, 22)]  # one plain pass (rows 0, 4, 8, 12: prompts of 1, 3, 7, 12 tokens)


def test_shared_prompts_are_off_with_activation_checkpointing(tiny_model_dir):
    """Activation checkpointing drops the KV cache in training: the update then runs plain
    passes (every FSDP2 rank alike: a property of the model, not of its rows)."""
    from k15rl.trainer.logprobs import shares_prompts

    model = load_model(tiny_model_dir)
    enable_activation_checkpointing(model)
    assert not shares_prompts(model)


def test_lr_schedule_hand_computed():
    """algorithm.lr_schedule over 5 iterations (t = 0, 1/4, 1/2, 3/4, 1), lr_end_ratio 0.1:
    linear 1 - 0.9 t; cosine 0.1 + 0.9 (1 + cos(pi t)) / 2; constant lr. One iteration or
    an iteration past the last (a resumed run given more) are handled."""
    linear = AlgorithmConfig(lr=1e-3, lr_schedule="linear", lr_end_ratio=0.1)
    assert [lr_at(linear, v, 5) for v in range(5)] == pytest.approx([1e-3, 7.75e-4, 5.5e-4, 3.25e-4, 1e-4])
    cosine = AlgorithmConfig(lr=1e-3, lr_schedule="cosine", lr_end_ratio=0.1)
    half = 0.5 * 2 ** -0.5  # (1 + cos(pi / 4)) / 2 - 1/2
    assert [lr_at(cosine, v, 5) for v in range(5)] == pytest.approx(
        [1e-3, 1e-4 + 9e-4 * (0.5 + half), 5.5e-4, 1e-4 + 9e-4 * (0.5 - half), 1e-4])
    assert lr_at(cosine, 7, 5) == pytest.approx(1e-4)
    assert lr_at(linear, 0, 1) == 1e-3
    assert [lr_at(AlgorithmConfig(lr=1e-3), v, 5) for v in range(5)] == [1e-3] * 5


def test_shared_prompt_gradient_is_bitwise_reproducible_with_threads(tiny_model_dir):
    """The shared-prompt path's gradient is the same bits on every backward with several
    threads. Its per-row keys and values were `keys[rows]`, whose backward (index_put_ with
    accumulate) adds with atomics across threads on CPU: the same run's loss then differed
    in the last bits from one run to the next (2 threads, the demo's first iteration)."""
    import random

    from k15rl.types import Prompt, Trajectory

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    vocab = model.config.vocab_size
    rng = random.Random(0)
    # 8 prompts of 24 tokens, 16 samples each: the keys' gradient [128, 2, 23, 16] is past
    # the size at which torch's CPU kernels split work across threads
    prompts = [[rng.randrange(5, vocab) for _ in range(24)] for _ in range(8)]
    # each prompt's rows spread over the batch (as in the length-sorted passes), so that
    # threads taking halves of the rows add into the same prompt's keys
    trajs = [Trajectory(Prompt(f"p{i % 8}", (("user", "?"),), "", "t"), i % 8, prompts[i % 8],
                        [rng.randrange(5, vocab) for _ in range(rng.randrange(1, 12))], [], "stop",
                        reward=float(i % 3 == 0)) for i in range(128)]
    for t in trajs:
        t.logprobs = [-2.0] * len(t.response_ids)
    batch = make_train_batch(trajs, tok.pad_token_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(10):
            model.zero_grad()
            logp = token_logprobs(model, batch.tokens, share_prompts=True)
            loss, _ = k15_loss(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, tau=0.5)
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
