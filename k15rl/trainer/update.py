"""The policy update of one iteration (report §2.3.2): optimizer steps on its trajectories.

    plan = update_plan(cfg, pad_id)            # decided once: the loss with its arguments, optimizer settings
    trainer = PolicyTrainer(model, plan)       # one process; FSDP2 ranks pass their Shard
    metrics = trainer.update(trajectories, version=i, seed=s)

`PolicyTrainer.update` calls the loss itself, in one place. Micro-batching and sharding
never change the loss: it is always taken on the log-probs [N, T] of the whole
mini-batch (`LogprobPasses`), so group baselines and normalisations span it.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from k15rl.algorithms.losses import LossFn, make_loss
from k15rl.config import AlgorithmConfig, TrainConfig
from k15rl.distributed.shard import ONE_RANK, Shard
from k15rl.errors import UserError
from k15rl.trainer.logprobs import TokenBatch, collate, shares_prompts, token_logprobs
from k15rl.types import Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdatePlan:
    """How every iteration's update runs, decided once from the config; the same object
    reaches the trainer in this process and on Ray trainer workers."""

    loss_fn: LossFn  # a loss of k15rl.algorithms with its hyper-parameters bound (`make_loss`)
    algorithm: AlgorithmConfig  # optimizer, mini-batches, epochs, micro-batch, bf16 autocast, recompute
    temperature: float  # the sampling temperature: log-probs are taken under softmax(logits / T)
    train_on_stale: bool  # tokens sampled by older policy versions (partial rollouts) count in the loss
    pad_id: int
    iterations: int = 1  # the run's, for algorithm.lr_schedule


def update_plan(cfg: TrainConfig, pad_id: int) -> UpdatePlan:
    return UpdatePlan(make_loss(cfg.algorithm), cfg.algorithm, cfg.rollout.temperature or 1.0,
                      cfg.rollout.train_on_stale_segments, pad_id, cfg.iterations)


def lr_at(a: AlgorithmConfig, version: int, iterations: int) -> float:
    """The learning rate of the update of iteration `version` (0-based; the policy pi_i it
    starts from) of `iterations` (algorithm.lr_schedule): `lr` throughout (constant), or
    from `lr` at the first iteration to `lr * lr_end_ratio` at the last, on a straight line
    (linear) or a half cosine (cosine). Iterations past the last (a run resumed with more)
    keep the last one's."""
    if a.lr_schedule == "constant" or iterations <= 1:
        return a.lr
    t = min(max(version, 0) / (iterations - 1), 1.0)  # 0 at the first iteration, 1 at the last
    shape = 1.0 - t if a.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
    return a.lr * (a.lr_end_ratio + (1.0 - a.lr_end_ratio) * shape)


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

    def subset(self, rows: list[int]) -> "TrainBatch":
        tokens = self.tokens.select(rows)
        T = tokens.response_ids.shape[1]
        idx = torch.tensor(rows, device=self.rewards.device)
        return TrainBatch(tokens, self.old_logprobs[idx, :T], self.rewards[idx], self.group_ids[idx],
                          self.stale[idx, :T], self.loss_mask[idx, :T])


def make_train_batch(
    trajectories: Sequence[Trajectory], pad_id: int, version: int = 0, train_on_stale: bool = True,
    tokenizer=None,
) -> TrainBatch:
    """Tensors of `trajectories`. Tokens sampled by a policy older than `version` are
    `stale`; unless `train_on_stale`, they are left out of the loss (they still
    condition the later tokens) - report §2.6.2. Prompts with images get their pixel
    values from `tokenizer` (a `VisionTokenizer`), so log-probs are recomputed with them."""
    tokens = collate([t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories], pad_id)
    tokens = tokens.with_images([t.prompt.images for t in trajectories], tokenizer)
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


# What one more forward pass costs beyond its padded token slots (the per-layer calls), in
# token slots; a rough figure for the built-in models on CPU: it only breaks near-ties.
PASS_TOKENS = 32


def micro_batches(tokens: TokenBatch, micro_batch: int, rows: Sequence[int] | None = None,
                  max_tokens: int = 0) -> list[list[int]]:
    """Row indices (all, or `rows`) in chunks, rows of similar length together (less
    padding); rows that fit in one chunk keep their order.

    `max_tokens` = 0: chunks of `micro_batch` rows. `max_tokens` > 0: chunks by token count
    (algorithm.micro_batch_tokens), each holding at most `max_tokens` padded tokens (rows x
    its longest row; a row longer than that is a chunk alone): `token_chunks` picks them.

    >>> tk = collate([[1]] * 4, [[2] * 3, [2], [2] * 7, [2] * 2], 0)  # 4, 2, 8, 3 tokens
    >>> micro_batches(tk, 2), micro_batches(tk, 2, max_tokens=8)
    ([[1, 3], [0, 2]], [[1, 3], [0], [2]])
    """
    order = list(range(len(tokens)) if rows is None else rows)
    lengths = tokens.attention_mask.sum(1).tolist()  # [N] real tokens of each row
    if max_tokens <= 0:
        if len(order) > micro_batch:
            order.sort(key=lambda i: lengths[i])
        return [order[s : s + micro_batch] for s in range(0, len(order), micro_batch)]
    return token_chunks(order, [lengths[i] for i in order], max_tokens)


def token_chunks(rows: Sequence[int], lengths: Sequence[int], max_tokens: float,
                 pass_tokens: int = PASS_TOKENS, recompute: bool = True) -> list[list[int]]:
    """The rows (lengths[i]: row i's tokens) in the forward passes that cost least, each
    within `max_tokens` padded tokens. Cost: padded token slots + `pass_tokens` per pass.
    One pass (all rows fit) keeps its graph for the backward: forward + backward, about 3
    forwards' work; several passes cost a no-grad forward, a recomputing forward and a
    backward, about 4 (LogprobPasses). So one pass is kept, rows in order, unless splitting
    saves more than that. Several: contiguous runs of the rows sorted by length (an optimal
    chunking of a sorted list is contiguous), the cheapest by dynamic programming; written
    here because no library chunks by padded size. `recompute=False`: every pass keeps its
    graph (`length_passes`), so several passes cost what their padded tokens cost and the
    cheapest chunking is taken as it is (one chunk: the rows in their order).

    >>> token_chunks([0, 1, 2, 3], [100, 100, 100, 100], 400)  # equal lengths: one pass
    [[0, 1, 2, 3]]
    >>> token_chunks([0, 1, 2, 3], [50, 60, 70, 400], 1600)  # one pass 3 x 1,600; two 4 x (210 + 400)
    [[0, 1, 2], [3]]
    >>> token_chunks([0, 1, 2], [5, 9, 3], 10)  # a longer row than the budget: alone
    [[2, 0], [1]]
    """
    if not rows:
        return []
    n, longest = len(rows), max(lengths)
    by_len = sorted(range(n), key=lambda i: lengths[i])
    L = [lengths[i] for i in by_len]
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the j shortest rows
    start = [0] * (n + 1)  # start[j]: where the last chunk of the j shortest rows starts
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # the last chunk: sorted rows [i, j), padded to L[j-1]
            if (j - i) * L[j - 1] > max_tokens and j - i > 1:
                break
            cost = best[i] + (j - i) * L[j - 1] + pass_tokens
            if cost < best[j]:
                best[j], start[j] = cost, i
    if n * longest <= max_tokens and (start[n] == 0 if not recompute
                                      else 3 * (n * longest + pass_tokens) <= 4 * best[n]):
        return [list(rows)]
    chunks, j = [], n
    while j > 0:
        chunks.append([rows[by_len[k]] for k in range(start[j], j)])
        j = start[j]
    return chunks[::-1]


def shard_passes(tokens: TokenBatch, micro_batch: int, shard: Shard, max_tokens: int = 0) -> list[list[int]]:
    """This rank's forward passes over `tokens`: micro-batches of its rows (`shard.rows`),
    padded with empty ones so that every rank runs the same number of passes.

    FSDP2 all-gathers each layer's weights in every forward (and reduce-scatters in every
    backward), collectives all ranks must join; a rank with fewer rows, or none, runs
    dummy passes (row 0, contributing nothing). Every rank holds the whole batch, so it
    counts every rank's micro-batches itself (by rows or by tokens): no communication.
    One rank: the micro-batches of all rows.
    """
    N = len(tokens)
    mine = micro_batches(tokens, micro_batch, shard.rows(N), max_tokens)
    n = max(len(micro_batches(tokens, micro_batch, Shard(r, shard.world).rows(N), max_tokens))
            for r in range(shard.world))
    return mine + [[] for _ in range(n - len(mine))]


def length_passes(tokens: TokenBatch, shard: Shard, pass_tokens: int | None = None) -> list[list[int]]:
    """This rank's rows, which fit in memory in one pass, as several passes of rows of
    similar length, each keeping its graph: the same memory at most, less padding.

    One pass pads every row to the longest; with heavy-tailed response lengths most of its
    work is padding (the demo: a 64-row pass is about half padding). Rows of similar length
    together (`token_chunks` without recomputation: padded tokens + `pass_tokens` per pass,
    the least) do the same rows' work on fewer padded tokens; every kept graph together
    holds at most the one pass's activations. A row's log-probs do not depend on the rows
    it shares a pass with (causal attention, right padding), only their rounding can.
    Every rank runs as many passes as the rank with the most (FSDP2's collectives), the
    others padded with empty ones, as in `shard_passes`.

    >>> tk = collate([[1]] * 4, [[2] * 30, [2], [2] * 29, [2] * 2], 0)  # 31, 2, 30, 3 tokens
    >>> length_passes(tk, ONE_RANK, pass_tokens=8), length_passes(tk, ONE_RANK, pass_tokens=100)
    ([[1, 3], [2, 0]], [[0, 1, 2, 3]])
    """
    N = len(tokens)
    lengths = tokens.attention_mask.sum(1).tolist()  # [N] real tokens of each row
    pass_tokens = PASS_TOKENS if pass_tokens is None else pass_tokens

    def passes(rows: list[int]) -> list[list[int]]:
        return token_chunks(rows, [lengths[i] for i in rows], math.inf, pass_tokens, recompute=False)

    mine = passes(shard.rows(N))
    n = max(len(passes(Shard(r, shard.world).rows(N))) for r in range(shard.world))
    return mine + [[] for _ in range(n - len(mine))]


class LogprobPasses:
    """The forward passes over a batch that keep any loss exact under micro-batching and
    sharding (report §2.6: trainer workers split the batch).

        passes = LogprobPasses(model, tokens, micro_batch, temperature, bf16, shard, max_tokens=0)
        logp = passes.logprobs()        # [N, T] the whole batch's, on every rank; a leaf
        loss, metrics = loss_fn(logp, ...)
        loss.backward()                 # d loss / d logp: logp.grad [N, T]
        passes.backward(logp.grad)      # through this rank's passes into the weights

    The loss is taken on the full batch's log-probs, so group baselines and the
    token/sequence normalisations span the whole batch; each rank then back-propagates
    its own rows' slice of d loss / d logp. Its parameter gradient is its rows' share of
    the one-process gradient; FSDP sums the shares across ranks (`shard_model` sets SUM).

    Micro-batches hold `micro_batch` rows, or with `max_tokens` > 0 at most that many
    padded tokens each (`micro_batches`). If this rank's rows fit in one micro-batch (the
    same on every rank: `shard_passes` pads every rank to the most passes), the graphs of
    the forward are kept for the backward: no extra forward; that one micro-batch runs as
    passes of rows of similar length (`length_passes`: less padding, no more memory).
    Otherwise a no-grad pass per micro-batch first, and a recomputing pass per micro-batch
    in `backward`: one extra forward for exactness.
    """

    def __init__(self, model, tokens: TokenBatch, micro_batch: int, temperature: float, bf16: bool,
                 shard: Shard = ONE_RANK, grad: bool = True, max_tokens: int = 0):
        self.model, self.tokens, self.temperature, self.bf16, self.shard = model, tokens, temperature, bf16, shard
        # Each distinct prompt once per pass; not under FSDP2, whose parameters, resharded after
        # the prompts' forward, are gone when the backward reaches it (the same on every rank)
        self.share = shard.world == 1 and tokens.images is None and shares_prompts(model)
        self.rows = shard_passes(tokens, micro_batch, shard, max_tokens)  # max_tokens > 0: by token count
        self.keep_graph = grad and len(self.rows) == 1
        if len(self.rows) == 1:  # all of this rank's rows in memory at once: split by length
            self.rows = length_passes(tokens, shard)
        with torch.set_grad_enabled(self.keep_graph):
            self.lps = [self._forward(rows) for rows in self.rows]  # [n, t] each
        if not grad:
            shard.reshard(model)

    def _forward(self, rows: list[int]) -> torch.Tensor:
        """token_logprobs of `rows`: [n, t]; for [] a dummy pass on row 0 (output ignored)."""
        tk = self.tokens
        with torch.autocast(tk.input_ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext():
            return token_logprobs(self.model, tk.select(rows or [0]), self.temperature, self.share)  # [n, t]

    def logprobs(self) -> torch.Tensor:
        """The whole batch's log-probs [N, T] on every rank, detached, requiring grad."""
        N, T = self.tokens.response_ids.shape
        mine = self.shard.rows(N)
        pos = {i: k for k, i in enumerate(mine)}  # batch row -> row of `local`
        local = torch.zeros(len(mine), T, device=self.tokens.response_ids.device)  # [n_local, T]
        for rows, lp in zip(self.rows, self.lps):
            if rows:
                local[[pos[i] for i in rows], : lp.shape[1]] = lp.detach().float()
        return self.shard.gather(local, N).requires_grad_(True)  # [N, T]

    def backward(self, grad: torch.Tensor) -> None:
        """Back-propagate `grad` [N, T] (d loss / d logprobs) through this rank's passes."""
        def rows_grad(rows: list[int], lp: torch.Tensor) -> torch.Tensor:
            return grad[rows, : lp.shape[1]] if rows else torch.zeros_like(lp)  # [n, t]

        if self.keep_graph:  # the kept graphs, in one backward
            torch.autograd.backward(self.lps, [rows_grad(rows, lp) for rows, lp in zip(self.rows, self.lps)])
            return
        for rows in self.rows:
            lp = self._forward(rows)  # [n, t] with grad
            lp.backward(rows_grad(rows, lp))


def logprob_gap(recorded: torch.Tensor, trainer: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the engine's recorded log-probs are from the trainer's for the same tokens:
    mean and max of |recorded - trainer| in nats over the tokens where `mask` [N, T] is
    true; no metrics when there are none. Both [N, T].

    A gap well above numerical noise means the engine samples from another distribution
    than the one the trainer scores (temperature, weights not synced, dtype, template).

    >>> g = logprob_gap(torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.25, -1.5, -9.0]]),
    ...                 torch.tensor([[True, True, False]]))
    >>> g == {"rollout/logprob_gap_mean": 0.375, "rollout/logprob_gap_max": 0.5}
    True
    """
    gap = (recorded.float() - trainer.float()).abs()[mask.bool()]  # [n tokens]
    if gap.numel() == 0:
        return {}
    return {"rollout/logprob_gap_mean": float(gap.mean()), "rollout/logprob_gap_max": float(gap.max())}


def minibatch_rows(group_ids: torch.Tensor, minibatches: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """Rows of each optimizer step: every epoch the groups are shuffled and dealt into
    `minibatches` mini-batches of whole groups, so each one's mean-reward baselines are
    those of the full group. Empty mini-batches (fewer groups than steps) are skipped.

    >>> list(minibatch_rows(torch.tensor([0, 0, 1, 1, 2, 2]), 2, 1, seed=0))
    [[0, 1, 2, 3], [4, 5]]
    """
    rows_of: dict[int, list[int]] = {}  # group id -> its rows, one pass over the batch
    for i, g in enumerate(group_ids.tolist()):
        rows_of.setdefault(g, []).append(i)
    groups = sorted(rows_of)
    rng = random.Random(seed)
    for _ in range(epochs):
        order = groups[:]
        rng.shuffle(order)
        for m in range(minibatches):
            rows = sorted(i for g in order[m::minibatches] for i in rows_of[g])
            if rows:
                yield rows


def enable_activation_checkpointing(model) -> None:
    """Activation (gradient) checkpointing (algorithm.activation_checkpointing): each
    decoder layer keeps only its input in a forward with gradient and recomputes its
    activations in the backward. Any Hugging Face causal LM (the built-in model is a
    `LlamaForCausalLM`); non-reentrant, so gradients are those without it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"algorithm.activation_checkpointing: {type(model).__name__} does not support "
                        "gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _fuses_adamw(params: Sequence[torch.Tensor]) -> bool:
    """Whether AdamW can take its fused kernel (one pass per tensor, none of the for-loop
    version's [V, H] temporaries for sqrt and division): plain float tensors on a CPU or a
    GPU (not FSDP2's DTensors), as torch's fused AdamW requires."""
    from torch.distributed.tensor import DTensor

    return bool(params) and all(not isinstance(q, DTensor) and q.is_floating_point()
                                and q.device.type in ("cpu", "cuda") for q in params)


class PolicyTrainer:
    """The policy being trained and its update, on one rank of `shard` (one process:
    ONE_RANK; FSDP2 ranks: `model` wrapped by `k15rl.distributed.shard.shard_model`, every
    rank called with the same trajectories, version and seed, each computing its own
    rows; the steps equal the one-process ones and so do the metrics on every rank)."""

    def __init__(self, model, plan: UpdatePlan, shard: Shard = ONE_RANK, device: str = "cpu", tokenizer=None):
        # tokenizer: a VLM's `VisionTokenizer`, for the pixel values of prompts with images
        self.model, self.plan, self.shard, self.device, self.tokenizer = model, plan, shard, device, tokenizer
        self.optimizer: torch.optim.Optimizer | None = None  # kept across iterations: algorithm.optimizer_reset=false
        if plan.algorithm.activation_checkpointing:
            enable_activation_checkpointing(model)

    def update(self, trajectories: Sequence[Trajectory], version: int, seed: int) -> dict[str, float]:
        """All optimizer steps of iteration `version` (the policy pi_i) on `trajectories`.

        The optimizer is created afresh here, i.e. reset at the start of every iteration,
        as the report prescribes (§2.3.2); with algorithm.optimizer_reset=false one AdamW
        carries its moments from iteration to iteration (the ablation). Returns the metrics averaged over steps, and
        rollout/logprob_gap_mean, _max (`logprob_gap`): the engine's recorded log-probs
        against the trainer's pi_i ones over the non-stale response tokens of the first
        mini-batch (its forward precedes any step), or of the whole batch when pi_i's
        log-probs are recomputed anyway; absent when every token is stale.
        """
        p, a, model = self.plan, self.plan.algorithm, self.model
        device = next(model.parameters()).device  # on CPU .to() changes nothing
        batch = make_train_batch(trajectories, p.pad_id, version, p.train_on_stale, self.tokenizer).to(device)
        fresh = batch.tokens.response_mask.bool() & ~batch.stale  # [N, T] tokens sampled by pi_i itself
        gap: dict[str, float] | None = None  # rollout/logprob_gap_*: engine vs trainer, before any step
        if a.recompute_old_logprobs or (p.train_on_stale and batch.stale.any()):
            # pi_i's log-probs from the trainer: for every token, or for the stale ones whose
            # recorded log-probs come from an older policy (the loss's reference is pi_i).
            current = LogprobPasses(model, batch.tokens, a.micro_batch, p.temperature, a.autocast_bf16,
                                    self.shard, grad=False, max_tokens=a.micro_batch_tokens).logprobs().detach()
            gap = logprob_gap(batch.old_logprobs, current, fresh)  # the whole batch's fresh tokens
            batch.old_logprobs = current if a.recompute_old_logprobs else torch.where(batch.stale, current,
                                                                                       batch.old_logprobs)
        opt = self.optimizer if not a.optimizer_reset and self.optimizer is not None else self._new_optimizer()
        if not a.optimizer_reset:
            self.optimizer = opt
        lr = lr_at(a, version, p.iterations)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        sums: dict[str, float] = {}
        steps = skipped = trailing = 0  # trailing: skipped steps since the last applied one
        for rows in minibatch_rows(batch.group_ids, a.minibatches, a.epochs, seed):
            mb = batch.subset(rows)
            opt.zero_grad(set_to_none=True)
            passes = LogprobPasses(model, mb.tokens, a.micro_batch, p.temperature, a.autocast_bf16, self.shard,
                                   max_tokens=a.micro_batch_tokens)
            logp = passes.logprobs()  # [n, T]
            if gap is None:  # the first mini-batch, before the first step: these are pi_i's log-probs
                gap = logprob_gap(mb.old_logprobs, logp.detach(), fresh[rows, : logp.shape[1]])
            loss, metrics = p.loss_fn(logp, mb.old_logprobs, mb.rewards, mb.loss_mask, mb.group_ids)
            loss.backward()
            passes.backward(logp.grad)
            grad_norm = self.shard.global_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip))
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
        out["train/lr"] = lr
        out.update(gap or {})
        return out

    def _new_optimizer(self) -> torch.optim.Optimizer:
        a = self.plan.algorithm
        trained = [q for q in self.model.parameters() if q.requires_grad]  # with LoRA: the adapters only
        return torch.optim.AdamW(trained, lr=a.lr, betas=(a.betas[0], a.betas[1]), weight_decay=a.weight_decay,
                                 fused=_fuses_adamw(trained) or None)

    def optimizer_state(self) -> dict | None:
        """The optimizer's state_dict for a checkpoint when it carries over iterations
        (algorithm.optimizer_reset=false), else None: a reset optimizer has nothing to keep."""
        return self.optimizer.state_dict() if self.optimizer is not None else None

    def load_optimizer_state(self, state: dict) -> None:
        """Resume the optimizer a checkpoint saved (`optimizer_state`)."""
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state)

    def weights(self):
        """The newest weights, as the engines' `load_weights` takes them (with LoRA merged,
        in the base model's names: k15rl/models/lora.py)."""
        from k15rl.models.lora import policy_state_dict

        return policy_state_dict(self.model)

    def current_model(self):
        return self.model

    def offload(self) -> None:
        """Parameters to host memory while the engine samples (colocated; a no-op on CPU).
        The optimizer is created afresh every iteration (report §2.3.2): no state to move;
        a kept one (optimizer_reset=false) keeps its moments where they are."""
        if self.device != "cpu":
            self.model.to("cpu")

    def onload(self) -> None:
        if self.device != "cpu":
            self.model.to(self.device)
