"""Length reward (report §2.3.3): shorter correct responses earn more, within a group."""

from __future__ import annotations

import torch


def length_reward(lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample length reward [N] of report §2.3.3.

    For the responses of one group (one prompt): lambda_i = 0.5 - (len_i - min_len) /
    (max_len - min_len); the reward is lambda_i if response i is correct, else
    min(0, lambda_i). A group whose lengths are all equal gets 0. min and max are taken
    within each group only.

    lengths: [N] response tokens; correct: [N] bool or {0,1}; group_ids: [N].

    >>> length_reward(torch.tensor([10, 20, 30]), torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0])).tolist()
    [0.5, 0.0, -0.5]
    >>> length_reward(torch.tensor([10, 10]), torch.tensor([1, 0]), torch.tensor([3, 3])).tolist()
    [0.0, 0.0]
    """
    lengths = lengths.to(torch.float64)
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N]
    G = int(inv.max()) + 1 if inv.numel() else 0
    mins = torch.full((G,), float("inf"), dtype=lengths.dtype).scatter_reduce(0, inv, lengths, "amin")
    maxs = torch.full((G,), float("-inf"), dtype=lengths.dtype).scatter_reduce(0, inv, lengths, "amax")
    lo, hi = mins[inv], maxs[inv]  # [N]
    span = hi - lo
    lam = torch.where(span > 0, 0.5 - (lengths - lo) / span.clamp(min=1e-12), torch.zeros_like(lengths))
    out = torch.where(correct.bool(), lam, lam.clamp(max=0.0))
    return out.to(torch.float32)


def length_weight(iteration: int, weight: float, warmup_iterations: int) -> float:
    """Step schedule of report §2.3.3: 0 during the first `warmup_iterations`, then `weight`.

    >>> [length_weight(i, 0.1, 2) for i in range(4)]
    [0.0, 0.0, 0.1, 0.1]
    """
    return 0.0 if iteration < warmup_iterations else weight
