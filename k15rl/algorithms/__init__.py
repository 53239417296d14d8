"""Policy losses (report §2.3.2) and baselines for its ablations; the DPO loss of
long2short (report §2.4). Needs torch only."""

from k15rl.algorithms.dpo import dpo_loss
from k15rl.algorithms.losses import LOSSES, grpo_loss, group_mean, group_std, k15_loss, make_loss, rest_loss

__all__ = ["LOSSES", "dpo_loss", "grpo_loss", "group_mean", "group_std", "k15_loss", "make_loss", "rest_loss"]
