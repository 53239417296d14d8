"""The policy losses and the DPO loss against hand-computed numbers (RECIPE §2, §8)."""

import math

import pytest
import torch

from k15rl.algorithms import LOSSES, dpo_loss, grpo_loss, group_mean, k15_loss, rest_loss

# Four samples, two prompts (groups 0 and 1), T = 3, padding marked by the mask.
LOGP = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0], [-1.0, -1.0, -1.0], [-2.0, -9.0, -9.0]])
OLD = torch.tensor([[-1.0, -1.5, -7.0], [-1.0, -7.0, -7.0], [-1.0, -1.0, -1.0], [-2.0, -7.0, -7.0]])
MASK = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
REWARDS = torch.tensor([1.0, 0.0, 1.0, 1.0])
GROUPS = torch.tensor([0, 0, 1, 1])


def test_k15_sequence_value_by_hand():
    # S = [-3, -0.5, -3, -2], S_old = [-2.5, -1, -3, -2], group means [.5, .5, 1, 1], A = [.5, -.5, 0, 0]
    # policy: -A*S = [1.5, -0.25, 0, 0] -> mean 0.3125; l2 (tau=2): (S-S_old)^2 = [.25, .25, 0, 0] -> 0.125
    loss, m = k15_loss(LOGP, OLD, REWARDS, MASK, GROUPS, tau=2.0)
    assert loss.item() == pytest.approx(0.4375)
    assert m["loss/policy"] == pytest.approx(0.3125)
    assert m["loss/l2"] == pytest.approx(0.125)


def test_k15_sequence_gradient_by_hand():
    lp = LOGP.clone().requires_grad_(True)
    k15_loss(lp, OLD, REWARDS, MASK, GROUPS, tau=2.0)[0].backward()
    # d/d logp_jt = (1/N) (-A_j + tau (S_j - S_old_j)) on real tokens
    expected = torch.tensor([[-0.375, -0.375, 0], [0.375, 0, 0], [0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(lp.grad, expected)


def test_k15_token_normalization_by_hand():
    # 7 real tokens; policy sum 1.25, l2 sum (tau=2): token log-ratios 0, -.5 | .5 -> 0.25 + 0.25
    loss, m = k15_loss(LOGP, OLD, REWARDS, MASK, GROUPS, tau=2.0, normalization="token")
    assert loss.item() == pytest.approx(1.75 / 7)
    assert m["loss/policy"] == pytest.approx(1.25 / 7)
    # sequence and token aggregation differ: per-sequence l2 squares the summed log-ratio
    seq, _ = k15_loss(LOGP, OLD, REWARDS, MASK, GROUPS, tau=2.0)
    assert seq.item() != pytest.approx(loss.item())


def test_all_equal_rewards_give_zero_policy_gradient():
    lp = OLD.clone().requires_grad_(True)  # logp == old: the l2 term has no gradient either
    k15_loss(lp, OLD, torch.tensor([1.0, 1.0, 0.0, 0.0]), MASK, GROUPS, tau=1.0)[0].backward()
    assert torch.count_nonzero(lp.grad) == 0


def test_l2_term_has_zero_gradient_at_old_policy():
    lp = OLD.clone().requires_grad_(True)
    k15_loss(lp, OLD, REWARDS, MASK, GROUPS, tau=5.0)[0].backward()
    g_tau5 = lp.grad.clone()
    lp.grad = None
    k15_loss(lp, OLD, REWARDS, MASK, GROUPS, tau=0.1)[0].backward()
    torch.testing.assert_close(lp.grad, g_tau5)  # tau does not matter at the first step
    # and it is the plain policy gradient -(1/N) A_j on real tokens
    adv = REWARDS - group_mean(REWARDS, GROUPS)
    torch.testing.assert_close(lp.grad, -(adv[:, None] / 4) * MASK)


def test_padding_has_no_effect():
    noisy = LOGP.clone()
    noisy[MASK == 0] = 123.0
    noisy_old = OLD.clone()
    noisy_old[MASK == 0] = -55.0
    for norm in ("sequence", "token"):
        a, _ = k15_loss(LOGP, OLD, REWARDS, MASK, GROUPS, tau=2.0, normalization=norm)
        b, _ = k15_loss(noisy, noisy_old, REWARDS, MASK, GROUPS, tau=2.0, normalization=norm)
        assert a.item() == pytest.approx(b.item())
    # and extra all-padding columns change nothing
    wide = torch.nn.functional.pad(LOGP, (0, 4), value=-3.0)
    wide_old = torch.nn.functional.pad(OLD, (0, 4), value=-1.0)
    wide_mask = torch.nn.functional.pad(MASK, (0, 4))
    c, _ = k15_loss(wide, wide_old, REWARDS, wide_mask, GROUPS, tau=2.0)
    assert c.item() == pytest.approx(0.4375)


def test_group_ids_need_not_be_contiguous_or_ordered():
    perm = torch.tensor([2, 0, 3, 1])
    a, _ = k15_loss(LOGP, OLD, REWARDS, MASK, GROUPS, tau=2.0)
    b, _ = k15_loss(LOGP[perm], OLD[perm], REWARDS[perm], MASK[perm], torch.tensor([5, 5, 70, 70])[perm], tau=2.0)
    assert a.item() == pytest.approx(b.item())


def test_tau_must_be_positive():
    with pytest.raises(ValueError, match="tau"):
        k15_loss(LOGP, OLD, REWARDS, MASK, GROUPS, tau=0.0)


def test_grpo_at_old_policy_by_hand():
    # group 0: rewards (1, 0): mean .5, std .5 -> A = (+1, -1); group 1: all equal -> A = 0
    # ratio = 1: loss = -(sum_t A_j) / tokens = -(1 + 1 - 1 + 0) / 7
    loss, m = grpo_loss(OLD, OLD, REWARDS, MASK, GROUPS, clip_eps=0.2)
    assert loss.item() == pytest.approx(-1 / 7, rel=1e-4)
    assert m["loss/clip_frac"] == 0.0


def test_grpo_clips_ratio():
    # one token, A = +1 (group of (1, 0)), ratio e^1 > 1.2: clipped, no gradient
    lp = torch.tensor([[0.0], [-1.0]], requires_grad=True)
    old = torch.tensor([[-1.0], [-1.0]])
    loss, _ = grpo_loss(lp, old, torch.tensor([1.0, 0.0]), torch.ones(2, 1), torch.tensor([0, 0]))
    loss.backward()
    assert lp.grad[0, 0].item() == 0.0
    assert lp.grad[1, 0].item() == pytest.approx(0.5, rel=1e-4)  # -(-1 * ratio 1) / 2 tokens, d/dlogp


def test_rest_fits_correct_samples_only():
    # correct samples: rows 0, 2, 3 -> tokens (-1, -2), (-1, -1, -1), (-2): 6 tokens, sum -8
    loss, m = rest_loss(LOGP, OLD, REWARDS, MASK, GROUPS)
    assert loss.item() == pytest.approx(8 / 6)
    assert m["loss/kept_frac"] == pytest.approx(0.75)


def test_registry_names():
    assert set(LOSSES) == {"k15", "grpo", "rest"}


# ---- the DPO loss (long2short, report §2.4) ----

def test_dpo_loss_hand_computed():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # margins: 0.5 * ((-1 + 1.5) - (-3 + 2)) = 0.75 and 0.5 * (0 - (-1 + 2)) = -0.5
    # loss = (log(1 + e^-0.75) + log(1 + e^0.5)) / 2 = (0.386871 + 0.974077) / 2
    assert loss.item() == pytest.approx(0.680474, abs=1e-6)
    assert m["dpo/margin"] == pytest.approx(0.125)
    assert m["dpo/accuracy"] == 0.5
    assert m["dpo/reward_chosen"] == pytest.approx(0.5 * (0.5 + 0.0) / 2)


def test_dpo_loss_gradient_sign_and_value():
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0]), beta=0.5)
    loss.backward()
    # dL/dS_c = -(beta / P) * sigmoid(-margin): raising the chosen log-prob lowers the loss
    assert pc.grad.tolist() == pytest.approx([-0.25 / (1 + math.exp(0.75)), -0.25 / (1 + math.exp(-0.5))], abs=1e-6)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert torch.allclose(pr.grad, -pc.grad)


def test_dpo_loss_is_log2_at_the_reference():
    x = torch.randn(5)
    loss, m = dpo_loss(x, x - 1, x, x - 1, beta=3.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and m["dpo/margin"] == 0.0
