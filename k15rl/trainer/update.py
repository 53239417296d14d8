"""One training phase: optimizer steps on one iteration's trajectories (report §2.3.2)."""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from k15rl.trainer.logprobs import TokenBatch, collate, token_logprobs
from k15rl.types import Trajectory

log = logging.getLogger(__name__)


@dataclass
class UpdateSettings:
    lr: float
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    minibatches: int = 1
    epochs: int = 1
    micro_batch: int = 64
    temperature: float = 1.0
    recompute_old_logprobs: bool = False
    autocast_bf16: bool = False
    seed: int = 0
    version: int = 0  # the policy version being updated (pi_i)
    train_on_stale: bool = True  # tokens sampled by older versions (partial rollouts) count in the loss


@dataclass
class TrainBatch:
    """One iteration's trajectories as tensors."""

    tokens: TokenBatch
    old_logprobs: torch.Tensor  # [N, T] log pi of each response token when it was sampled
    rewards: torch.Tensor  # [N]
    group_ids: torch.Tensor  # [N]
    stale: torch.Tensor  # [N, T] bool, token sampled by an older policy version (partial rollouts)
    loss_mask: torch.Tensor  # [N, T] float, tokens that count in the loss


def make_train_batch(
    trajectories: Sequence[Trajectory], pad_id: int, version: int = 0, train_on_stale: bool = True
) -> TrainBatch:
    """Tensors of `trajectories`. Tokens sampled by a policy older than `version` are
    `stale`; unless `train_on_stale`, they are left out of the loss (they still
    condition the later tokens) - report §2.6.2."""
    tokens = collate([t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories], pad_id)
    old = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)  # [N, T]
    stale = torch.zeros(tokens.response_ids.shape, dtype=torch.bool)  # [N, T]
    for i, t in enumerate(trajectories):
        old[i, : len(t.logprobs)] = torch.tensor(t.logprobs, dtype=torch.float32)
        if t.versions:
            stale[i, : len(t.versions)] = torch.tensor(t.versions) < version
    mask = tokens.response_mask if train_on_stale else tokens.response_mask * ~stale
    return TrainBatch(
        tokens=tokens,
        old_logprobs=old,
        rewards=torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        group_ids=torch.tensor([t.group for t in trajectories], dtype=torch.long),
        stale=stale,
        loss_mask=mask,
    )


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()


def micro_batches(tokens: TokenBatch, micro_batch: int) -> list[list[int]]:
    """Row indices in chunks of `micro_batch`, rows of similar length together (less padding)."""
    order = sorted(range(len(tokens)), key=lambda i: int(tokens.attention_mask[i].sum()))
    return [order[s : s + micro_batch] for s in range(0, len(order), micro_batch)]


@torch.no_grad()
def batched_logprobs(model, tokens: TokenBatch, micro_batch: int, temperature: float, bf16: bool) -> torch.Tensor:
    """token_logprobs over micro-batches without gradient: [N, T]."""
    out = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)  # [N, T]
    for rows in micro_batches(tokens, micro_batch):
        with _autocast(bf16):
            lp = token_logprobs(model, tokens.select(rows), temperature)  # [n, t]
        out[rows, : lp.shape[1]] = lp.float()
    return out


def loss_backward(model, batch: TrainBatch, loss_fn: Callable, loss_kw: dict, s: UpdateSettings) -> dict[str, float]:
    """Backpropagate loss_fn over `batch`, exactly as if it were one forward pass.

    If the batch fits in one micro-batch, one forward and backward. Otherwise the loss
    is taken on log-probs computed without gradient, its gradient w.r.t. the log-probs
    [N, T] is kept, and each micro-batch's recomputed log-probs are back-propagated
    with their slice of that gradient. This keeps any loss exact under micro-batching
    (group baselines and sequence/token normalisations span the whole batch) at the
    cost of one extra forward pass.
    """
    tk = batch.tokens
    if len(tk) <= s.micro_batch:
        with _autocast(s.autocast_bf16):
            logp = token_logprobs(model, tk, s.temperature)  # [N, T]
        loss, metrics = loss_fn(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, **loss_kw)
        loss.backward()
        return metrics
    logp = batched_logprobs(model, tk, s.micro_batch, s.temperature, s.autocast_bf16).requires_grad_(True)
    loss, metrics = loss_fn(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, **loss_kw)
    loss.backward()
    grad = logp.grad  # [N, T]
    for rows in micro_batches(tk, s.micro_batch):
        sub = tk.select(rows)
        with _autocast(s.autocast_bf16):
            lp = token_logprobs(model, sub, s.temperature)  # [n, t]
        lp.backward(grad[rows, : lp.shape[1]])
    return metrics


def _subset(batch: TrainBatch, rows: list[int]) -> TrainBatch:
    tokens = batch.tokens.select(rows)
    T = tokens.response_ids.shape[1]
    idx = torch.tensor(rows)
    return TrainBatch(tokens, batch.old_logprobs[idx, :T], batch.rewards[idx], batch.group_ids[idx],
                      batch.stale[idx, :T], batch.loss_mask[idx, :T])


def policy_update(
    model, trajectories: Sequence[Trajectory], loss_fn: Callable, loss_kw: dict, s: UpdateSettings, pad_id: int
) -> dict[str, float]:
    """All optimizer steps of one iteration on `trajectories`.

    The optimizer is created afresh here, i.e. reset at the start of every iteration, as
    the report prescribes (§2.3.2). Mini-batches hold whole groups, so each one's
    mean-reward baselines are those of the full group. Returns averaged metrics.
    """
    batch = make_train_batch(trajectories, pad_id, s.version, s.train_on_stale)
    if s.recompute_old_logprobs or (s.train_on_stale and batch.stale.any()):
        # pi_i's log-probs from the trainer: for every token, or for the stale ones whose
        # recorded log-probs come from an older policy (the loss's reference is pi_i).
        current = batched_logprobs(model, batch.tokens, s.micro_batch, s.temperature, s.autocast_bf16)  # [N, T]
        batch.old_logprobs = current if s.recompute_old_logprobs else torch.where(batch.stale, current,
                                                                                   batch.old_logprobs)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    rows_of: dict[int, list[int]] = {}  # group id -> its rows, one pass over the batch
    for i, g in enumerate(batch.group_ids.tolist()):
        rows_of.setdefault(g, []).append(i)
    groups = sorted(rows_of)
    rng = random.Random(s.seed)
    model.train()
    sums: dict[str, float] = {}
    steps = skipped = trailing = 0  # trailing: skipped steps since the last applied one
    for _ in range(s.epochs):
        order = groups[:]
        rng.shuffle(order)
        for m in range(s.minibatches):
            mb_groups = order[m :: s.minibatches]
            rows = sorted(i for g in mb_groups for i in rows_of[g])
            if not rows:
                continue
            opt.zero_grad(set_to_none=True)
            metrics = loss_backward(model, _subset(batch, rows), loss_fn, loss_kw, s)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            metrics["train/grad_norm"] = float(grad_norm)
            if torch.isfinite(grad_norm) and all(math.isfinite(v) for v in metrics.values()):
                opt.step()
                trailing = 0
            else:  # a NaN or inf in the loss or the gradients: skip the step, weights untouched
                opt.zero_grad(set_to_none=True)
                skipped, trailing = skipped + 1, trailing + 1
                log.warning("non-finite loss or gradient (grad norm %s): optimizer step skipped", float(grad_norm))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
    model.eval()
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out["train/steps"] = float(steps)
    out["train/skipped_steps"] = float(skipped)
    out["train/trailing_skips"] = float(trailing)
    out["train/stale_token_frac"] = float(batch.stale[batch.tokens.response_mask > 0].float().mean())
    return out
