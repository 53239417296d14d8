"""The training phase: micro-batching is exact, mini-batches hold whole groups."""

import copy

import torch

from k15rl.algorithms import k15_loss
from k15rl.models.loading import load_model, load_tokenizer
from k15rl.rollout.collect import rollout
from k15rl.rollout.engine import HFEngine, SamplingParams
from k15rl.tasks import get_task, make_prompts
from k15rl.trainer.update import UpdateSettings, loss_backward, make_train_batch, policy_update


def _trajectories(model, tok, n_prompts=3, k=4):
    prompts = make_prompts(get_task("hops"), "train", n_prompts, (2,), seed=0)
    trajs = rollout(HFEngine(model, tok), tok, prompts, k, SamplingParams(max_new_tokens=12, seed=0))
    for i, t in enumerate(trajs):  # rewards with spread inside every group
        t.reward = float(i % 3 == 0)
    return trajs


def test_micro_batching_gives_the_same_gradient(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    batch = make_train_batch(trajs, tok.pad_token_id)
    batch.old_logprobs = batch.old_logprobs - 0.1  # make the l2 term non-trivial
    grads = []
    for micro in (len(trajs), 5, 1):  # one pass, uneven micro-batches splitting groups, one row each
        model.zero_grad()
        s = UpdateSettings(lr=1e-3, micro_batch=micro)
        for norm in ("sequence", "token"):
            loss_backward(model, batch, k15_loss, {"tau": 0.5, "normalization": norm}, s)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-6, rtol=1e-4)


def test_update_moves_logprobs_of_rewarded_samples_up(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    trajs = _trajectories(model, tok)
    before = make_train_batch(trajs, tok.pad_token_id)
    ref = copy.deepcopy(model)
    metrics = policy_update(model, trajs, k15_loss, {"tau": 0.01}, UpdateSettings(lr=3e-3, minibatches=3), tok.pad_token_id)
    assert metrics["train/steps"] == 3
    from k15rl.trainer.logprobs import token_logprobs

    with torch.no_grad():
        old = (token_logprobs(ref, before.tokens) * before.tokens.response_mask).sum(-1)
        new = (token_logprobs(model, before.tokens) * before.tokens.response_mask).sum(-1)
    adv = before.rewards - torch.stack([before.rewards[before.group_ids == g].mean() for g in before.group_ids])
    delta = new - old
    assert delta[adv > 0].mean() > 0 > delta[adv < 0].mean()
