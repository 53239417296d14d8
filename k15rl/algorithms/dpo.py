"""The DPO loss (Rafailov et al. 2023), used by long2short DPO (report §2.4).

A pure function on sequence log-probabilities; it is not in `LOSSES` (whose losses
take per-token log-probs of sampled groups): it takes preference pairs. With S the
sequence log-probability of a response (sum of its token log-probs) under the policy
and S_ref under the reference model:

    loss = -mean_pairs log sigmoid( beta * ((S_c - S_ref_c) - (S_r - S_ref_r)) )

Shapes: P pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss over P pairs: -mean log sigmoid(beta * ((S_c - S_ref_c) - (S_r - S_ref_r))).

    All inputs are sequence log-probabilities [P]. Metrics: the implicit rewards
    beta * (S - S_ref) of chosen and rejected, their margin, and the share of pairs
    whose chosen reward is the higher.

    >>> z = torch.zeros(1)
    >>> round(dpo_loss(z, z, z, z, beta=0.1)[0].item(), 4)  # log 2
    0.6931
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)  # [P]
    rejected_reward = beta * (policy_rejected - ref_rejected)  # [P]
    margin = chosen_reward - rejected_reward  # [P]
    loss = -F.logsigmoid(margin).mean()
    metrics = {
        "dpo/loss": loss.item(),
        "dpo/reward_chosen": chosen_reward.mean().item(),
        "dpo/reward_rejected": rejected_reward.mean().item(),
        "dpo/margin": margin.mean().item(),
        "dpo/accuracy": (margin > 0).float().mean().item(),
    }
    return loss, metrics
