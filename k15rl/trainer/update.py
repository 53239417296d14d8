"""One training phase: optimizer steps on one iteration's trajectories (report §2.3.2)."""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from k15rl.trainer.logprobs import TokenBatch, collate, token_logprobs
from k15rl.types import Trajectory

if TYPE_CHECKING:
    from k15rl.distributed.shard import Shard

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

    def to(self, device: torch.device | str) -> "TrainBatch":
        """The batch on `device` (the trainer's GPU); the same tensors when already there."""
        return TrainBatch(self.tokens.to(device), *(t.to(device) for t in (
            self.old_logprobs, self.rewards, self.group_ids, self.stale, self.loss_mask)))


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


def _autocast(enabled: bool, tokens: TokenBatch):
    """bf16 autocast on the device the batch is on."""
    return torch.autocast(tokens.input_ids.device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def micro_batches(tokens: TokenBatch, micro_batch: int, rows: Sequence[int] | None = None) -> list[list[int]]:
    """Row indices (all, or `rows`) in chunks of `micro_batch`, rows of similar length together (less padding)."""
    order = sorted(range(len(tokens)) if rows is None else rows, key=lambda i: int(tokens.attention_mask[i].sum()))
    return [order[s : s + micro_batch] for s in range(0, len(order), micro_batch)]


def shard_passes(tokens: TokenBatch, micro_batch: int, shard: Shard) -> list[list[int]]:
    """This rank's forward passes over `tokens`: micro-batches of its rows (`shard.rows`),
    padded with empty ones so that every rank runs the same number of passes.

    FSDP2 all-gathers each layer's weights in every forward (and reduce-scatters in every
    backward), collectives all ranks must join; a rank with fewer rows, or none, runs
    dummy passes (`_pass_logprobs` of []) that contribute nothing.
    """
    mine = micro_batches(tokens, micro_batch, shard.rows(len(tokens)))
    n = -(-shard.max_rows(len(tokens)) // micro_batch)
    return mine + [[] for _ in range(n - len(mine))]


def _pass_logprobs(model, tokens: TokenBatch, rows: list[int], temperature: float, bf16: bool) -> torch.Tensor:
    """token_logprobs of `rows`: [n, t]. For [] a dummy pass on row 0, whose output the
    caller ignores (no-grad) or back-propagates a zero gradient through."""
    with _autocast(bf16, tokens):
        return token_logprobs(model, tokens.select(rows or [0]), temperature)  # [n, t]


def _gather_passes(lps: list[torch.Tensor], passes: list[list[int]], tokens: TokenBatch, shard: Shard) -> torch.Tensor:
    """Each rank's per-pass log-probs -> the full batch's [N, T] on every rank (no grad)."""
    N, T = tokens.response_ids.shape
    mine = shard.rows(N)
    pos = {i: k for k, i in enumerate(mine)}  # batch row -> row of `local`
    local = torch.zeros(len(mine), T, device=tokens.response_ids.device)  # [n_local, T] in the order of shard.rows
    for rows, lp in zip(passes, lps):
        if rows:
            local[[pos[i] for i in rows], : lp.shape[1]] = lp.detach().float()
    return shard.gather(local, N)  # [N, T]


@torch.no_grad()
def batched_logprobs(
    model, tokens: TokenBatch, micro_batch: int, temperature: float, bf16: bool, shard: Shard | None = None
) -> torch.Tensor:
    """token_logprobs over micro-batches without gradient: [N, T].

    With a `shard`, this rank scores its own rows only and all ranks receive the full
    [N, T] (report §2.6: trainer workers split the batch)."""
    if shard is not None:
        passes = shard_passes(tokens, micro_batch, shard)
        lps = [_pass_logprobs(model, tokens, rows, temperature, bf16) for rows in passes]
        # FSDP2 keeps the root's parameters unsharded after a forward until a backward
        # reshards them; without one, `model.parameters()` would hand the optimizer those
        # plain tensors instead of the sharded ones (their updates silently lost).
        model.reshard()
        return _gather_passes(lps, passes, tokens, shard)
    out = torch.zeros(tokens.response_ids.shape, dtype=torch.float32, device=tokens.response_ids.device)  # [N, T]
    for rows in micro_batches(tokens, micro_batch):
        with _autocast(bf16, tokens):
            lp = token_logprobs(model, tokens.select(rows), temperature)  # [n, t]
        out[rows, : lp.shape[1]] = lp.float()
    return out


def loss_backward(
    model, batch: TrainBatch, loss_fn: Callable, loss_kw: dict, s: UpdateSettings, shard: Shard | None = None
) -> dict[str, float]:
    """Backpropagate loss_fn over `batch`, exactly as if it were one forward pass.

    If the batch fits in one micro-batch, one forward and backward. Otherwise the loss
    is taken on log-probs computed without gradient, its gradient w.r.t. the log-probs
    [N, T] is kept, and each micro-batch's recomputed log-probs are back-propagated
    with their slice of that gradient. This keeps any loss exact under micro-batching
    (group baselines and sequence/token normalisations span the whole batch) at the
    cost of one extra forward pass.

    With a `shard` (report §2.6), see `_sharded_loss_backward`: the same trick with the
    rows split between ranks.
    """
    if shard is not None:
        return _sharded_loss_backward(model, batch, loss_fn, loss_kw, s, shard)
    tk = batch.tokens
    if len(tk) <= s.micro_batch:
        with _autocast(s.autocast_bf16, tk):
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
        with _autocast(s.autocast_bf16, tk):
            lp = token_logprobs(model, sub, s.temperature)  # [n, t]
        lp.backward(grad[rows, : lp.shape[1]])
    return metrics


def _sharded_loss_backward(
    model, batch: TrainBatch, loss_fn: Callable, loss_kw: dict, s: UpdateSettings, shard: Shard
) -> dict[str, float]:
    """loss_backward on one rank of `shard.world` (report §2.6): every rank holds the
    whole `batch`, forwards only its own rows, and the loss is taken on the gathered
    full-batch log-probs [N, T], so group baselines and the token/sequence
    normalisations span the whole batch, and loss and metrics are the same on all ranks.

    The rank then back-propagates the gradient of that full loss w.r.t. its own rows'
    log-probs. Each rank's parameter gradient is its rows' share of the single-process
    gradient; FSDP sums the shares across ranks (`shard_model` sets SUM, not FSDP's
    default average), which gives the single-process gradient.

    If every rank's rows fit in one micro-batch, the graph of that one forward pass is
    kept and back-propagated after the gather: no extra forward. Otherwise, as in
    loss_backward, a no-grad pass first and a recomputing pass per micro-batch.
    """
    tk = batch.tokens
    passes = shard_passes(tk, s.micro_batch, shard)
    one_pass = len(passes) == 1  # the same on every rank: it depends on N, W and micro_batch only
    with torch.set_grad_enabled(one_pass):
        lps = [_pass_logprobs(model, tk, rows, s.temperature, s.autocast_bf16) for rows in passes]  # [n, t] each
    logp = _gather_passes(lps, passes, tk, shard).requires_grad_(True)  # [N, T]
    loss, metrics = loss_fn(logp, batch.old_logprobs, batch.rewards, batch.loss_mask, batch.group_ids, **loss_kw)
    loss.backward()
    grad = logp.grad  # [N, T] d(full-batch loss)/d(log-probs), the same on every rank
    for rows, lp in zip(passes, lps):
        if not one_pass:
            lp = _pass_logprobs(model, tk, rows, s.temperature, s.autocast_bf16)  # [n, t] with grad
        lp.backward(grad[rows, : lp.shape[1]] if rows else torch.zeros_like(lp))
    return metrics


def _subset(batch: TrainBatch, rows: list[int]) -> TrainBatch:
    tokens = batch.tokens.select(rows)
    T = tokens.response_ids.shape[1]
    idx = torch.tensor(rows, device=batch.rewards.device)
    return TrainBatch(tokens, batch.old_logprobs[idx, :T], batch.rewards[idx], batch.group_ids[idx],
                      batch.stale[idx, :T], batch.loss_mask[idx, :T])


def policy_update(
    model,
    trajectories: Sequence[Trajectory],
    loss_fn: Callable,
    loss_kw: dict,
    s: UpdateSettings,
    pad_id: int,
    shard: Shard | None = None,
) -> dict[str, float]:
    """All optimizer steps of one iteration on `trajectories`.

    The optimizer is created afresh here, i.e. reset at the start of every iteration, as
    the report prescribes (§2.3.2). Mini-batches hold whole groups, so each one's
    mean-reward baselines are those of the full group. Returns averaged metrics.

    With a `shard` (report §2.6; `model` wrapped by `k15rl.distributed.shard.shard_model`)
    every rank calls this with the same full `trajectories` and settings; each computes
    its own rows and the steps equal the single-process ones (see `loss_backward`).
    Metrics are the same on all ranks.
    """
    device = next(model.parameters()).device  # the trainer's device; on CPU .to() changes nothing
    batch = make_train_batch(trajectories, pad_id, s.version, s.train_on_stale).to(device)
    if s.recompute_old_logprobs or (s.train_on_stale and batch.stale.any()):
        # pi_i's log-probs from the trainer: for every token, or for the stale ones whose
        # recorded log-probs come from an older policy (the loss's reference is pi_i).
        current = batched_logprobs(model, batch.tokens, s.micro_batch, s.temperature, s.autocast_bf16,
                                   shard)  # [N, T]
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
            metrics = loss_backward(model, _subset(batch, rows), loss_fn, loss_kw, s, shard)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            if shard is not None:  # FSDP2: a replicated DTensor holding the global norm, which clipped
                grad_norm = grad_norm.full_tensor()  # every shard (docs/sharded_training.md); no communication
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
