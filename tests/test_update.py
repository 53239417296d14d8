"""The training phase: micro-batching is exact, mini-batches hold whole groups."""

import copy

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
from k15rl.trainer.update import LogprobPasses, PolicyTrainer, UpdatePlan, make_train_batch


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
    autograd through one forward over the whole batch (the reference)."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    batch = make_train_batch(trajs, tok.pad_token_id)
    batch.old_logprobs = batch.old_logprobs - 0.1  # make the l2 term non-trivial
    model.zero_grad()
    loss, _ = k15_loss(token_logprobs(model, batch.tokens), batch.old_logprobs, batch.rewards, batch.loss_mask,
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
