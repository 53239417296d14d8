"""Policy losses as pure functions on tensors.

Every loss has the signature

    loss_fn(logprobs, old_logprobs, rewards, mask, group_ids, **hyperparameters) -> (loss, metrics)

with logprobs, old_logprobs, mask: [N, T] (mask 1 on response tokens), rewards: [N],
group_ids: [N] integers (samples with the same id answer the same prompt). No model,
trainer or config object enters. `LOSSES` chooses one by name.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

Metrics = dict[str, float]


def group_mean(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [N] over each sample's group, returned per sample: [N].

    >>> group_mean(torch.tensor([1., 0., 1., 1.]), torch.tensor([0, 0, 7, 7])).tolist()
    [0.5, 0.5, 1.0, 1.0]
    """
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] dense group index
    sums = torch.zeros(int(inv.max()) + 1, dtype=values.dtype, device=values.device).index_add_(0, inv, values)
    counts = torch.zeros_like(sums).index_add_(0, inv, torch.ones_like(values))
    return (sums / counts)[inv]


def group_std(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Population standard deviation of `values` over each sample's group: [N]."""
    mu = group_mean(values, group_ids)
    return group_mean((values - mu) ** 2, group_ids).sqrt()


def k15_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    tau: float,
    normalization: str = "sequence",
) -> tuple[torch.Tensor, Metrics]:
    """Online policy mirror descent surrogate of Kimi k1.5 (report §2.3.2, Eq. 3).

    With S_j = sum_t mask * logprobs (sequence log-probability of response j),
    A_j = r_j - mean reward of j's group (detached), the default ("sequence") is

        loss = (1/N) sum_j [ -A_j * S_j + (tau/2) * (S_j - S_old_j)^2 ]

    whose gradient is the report's: policy gradient with the mean-reward baseline plus
    the gradient of an l2 penalty on the log-ratio to pi_i (the policy that sampled).
    `normalization="token"` is a per-token variant (not the report's): the same terms
    per token, summed over all tokens and divided by the number of tokens.

    logprobs, old_logprobs, mask: [N, T]; rewards, group_ids: [N].
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mask = mask.to(logprobs.dtype)
    adv = (rewards - group_mean(rewards, group_ids)).detach().to(logprobs.dtype)  # [N]
    old = old_logprobs.detach()
    if normalization == "sequence":
        seq = (logprobs * mask).sum(-1)  # [N]
        seq_old = (old * mask).sum(-1)  # [N]
        log_ratio = seq - seq_old  # [N]
        pg = -(adv * seq)  # [N]
        l2 = 0.5 * tau * log_ratio**2  # [N]
        loss = (pg + l2).mean()  # []
        pg_m, l2_m = pg.mean(), l2.mean()  # [], []
    elif normalization == "token":
        log_ratio = (logprobs - old) * mask  # [N, T]
        pg_t = -(adv[:, None] * logprobs) * mask  # [N, T]
        l2_t = 0.5 * tau * log_ratio**2  # [N, T]
        n_tok = mask.sum().clamp(min=1)  # []
        pg_m, l2_m = pg_t.sum() / n_tok, l2_t.sum() / n_tok  # [], []
        loss = pg_m + l2_m  # []
        log_ratio = log_ratio.sum(-1)  # [N, T] -> [N]: the sequence's, as in the metric of "sequence"
    else:
        raise ValueError(f"normalization must be 'sequence' or 'token', got {normalization!r}")
    metrics = {
        "loss/policy": float(pg_m.detach()),
        "loss/l2": float(l2_m.detach()),
        "loss/log_ratio_abs": float(log_ratio.detach().abs().mean()),
        "loss/adv_abs": float(adv.abs().mean()),
    }
    return loss, metrics


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO (Shao et al. 2024) without a KL term: PPO-clip on per-token ratios with
    group-normalised advantages A_j = (r_j - mean) / (std + eps), token-mean aggregation.
    A baseline for the report's ablations (§2.3.2 compares against other objectives)."""
    mask = mask.to(logprobs.dtype)
    adv = ((rewards - group_mean(rewards, group_ids)) / (group_std(rewards, group_ids) + eps)).detach()  # [N]
    ratio = torch.exp(logprobs - old_logprobs.detach())  # [N, T]
    a = adv[:, None].to(logprobs.dtype)  # [N, 1]
    obj = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)  # [N, T]
    n_tok = mask.sum().clamp(min=1)  # []
    loss = -(obj * mask).sum() / n_tok  # []
    clipped = ((ratio - 1).abs() > clip_eps).to(mask.dtype)  # [N, T]
    return loss, {
        "loss/policy": float(loss.detach()),
        "loss/clip_frac": float((clipped * mask).sum() / n_tok),
        "loss/adv_abs": float(adv.abs().mean()),
    }


def rest_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """ReST-style fitting of the best samples only (Gulcehre et al. 2023): negative
    log-likelihood, token mean, over samples with reward > threshold. The report's
    §2.3.2 ablation: it ignores negative samples, unlike the mirror-descent loss."""
    keep = (rewards > threshold).to(logprobs.dtype)[:, None] * mask.to(logprobs.dtype)  # [N, T]
    n_tok = keep.sum()  # []
    loss = -(logprobs * keep).sum() / n_tok.clamp(min=1)  # []
    return loss, {"loss/policy": float(loss.detach()), "loss/kept_frac": float((rewards > threshold).float().mean())}


LossFn = Callable[..., tuple[torch.Tensor, Metrics]]
LOSSES: dict[str, LossFn] = {"k15": k15_loss, "grpo": grpo_loss, "rest": rest_loss}


def make_loss(a: Any) -> LossFn:
    """The configured loss with its hyper-parameters bound, each an explicit config field
    (`a` is a k15rl.config.AlgorithmConfig; only its fields are read):
    `loss_fn(logprobs, old_logprobs, rewards, mask, group_ids) -> (loss, metrics)`.

    >>> from k15rl.config import AlgorithmConfig
    >>> make_loss(AlgorithmConfig(loss="k15", tau=0.1)).keywords
    {'tau': 0.1, 'normalization': 'sequence'}
    """
    arguments = {
        "k15": {"tau": a.tau, "normalization": a.normalization},
        "grpo": {"clip_eps": a.clip_eps, "eps": a.std_eps},
        "rest": {"threshold": a.rest_threshold},
    }
    return partial(LOSSES[a.loss], **arguments[a.loss])
