"""Policy losses (report §2.3.2) and baselines for its ablations. Needs torch only."""

from k15rl.algorithms.losses import LOSSES, grpo_loss, group_mean, group_std, k15_loss, rest_loss

__all__ = ["LOSSES", "grpo_loss", "group_mean", "group_std", "k15_loss", "rest_loss"]
