"""Data-parallel training over several processes with FSDP2 (report §2.6, RECIPE §6).

The report trains with many trainer workers; this module is the piece that lets the
one training step of `k15rl.trainer.update` run on W processes without changing its
math:

- `Shard` names this process (rank r of W) and splits a batch's rows between ranks;
  `Shard.gather` puts per-rank rows back into one full batch on every rank.
- `init_process_group` / `shard_from_env` join the process group (`shard_from_env`
  reads the variables `torchrun` sets).
- `shard_model` wraps a Hugging Face causal LM with FSDP2 (`fully_shard`): each
  decoder layer is its own unit, the root holds the embeddings and the head. It
  makes FSDP *sum* gradients across ranks instead of averaging them: each rank
  back-propagates its own rows' share of the full-batch loss, so the sum is the
  single-process gradient (see `k15rl.trainer.update.LogprobPasses`).
- `full_state_dict` collects the full weights on rank 0 (plain HF names).

docs/sharded_training.md tells the whole story and the measured differences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Shard:
    """Rank `rank` of `world` data-parallel processes.

    Rows are dealt out strided (rank r gets rows r, r+W, r+2W, ...): counts differ by at
    most one, and every rank gets rows from across the batch (groups are contiguous and
    tend to share lengths, so this also spreads the long ones).

    >>> Shard(1, 2).rows(5), Shard(2, 3).rows(2), Shard(0, 2).max_rows(5)
    ([1, 3], [], 3)
    """

    rank: int
    world: int

    def rows(self, n: int) -> list[int]:
        """Indices of the rows of an n-row batch this rank computes (empty when n <= rank)."""
        return list(range(self.rank, n, self.world))

    def max_rows(self, n: int) -> int:
        """The most rows any rank gets from an n-row batch (rank 0's count)."""
        return -(-n // self.world)

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """[n_local, T_local] on every rank -> [n, T_max] on every rank, rows in batch order.

        `local` holds this rank's rows, in the order of `self.rows(n)`; ranks may have
        different T_local, shorter ones are padded with 0. Every rank must call it (two
        all-gathers: the widths, then the rows). The result is bitwise the same on all
        ranks, so anything computed from it (loss, metrics, gradients) is too.
        """
        rows = self.rows(n)
        if local.shape[0] != len(rows):
            raise ValueError(f"rank {self.rank} holds {local.shape[0]} rows, expected {len(rows)} of {n}")
        if self.world == 1:
            return local
        widths = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(self.world)]
        dist.all_gather(widths, torch.tensor([local.shape[1]], device=local.device))
        T = int(max(widths))
        m = self.max_rows(n)
        padded = local.new_zeros(m, T)  # [m, T] same shape on every rank, as all_gather needs
        padded[: len(rows), : local.shape[1]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        out = local.new_zeros(n, T)  # [n, T]
        for r, part in enumerate(parts):
            out[r :: self.world] = part[: len(range(r, n, self.world))]
        return out

    def reshard(self, model) -> None:
        """After forward passes without a backward (FSDP2 ranks): FSDP2 keeps the root's
        parameters unsharded after a forward until a backward reshards them; without
        this, `model.parameters()` would hand the optimizer those plain tensors instead
        of the sharded ones (their updates silently lost). One rank: nothing to do."""
        if self.world > 1:
            model.reshard()

    def global_norm(self, norm: torch.Tensor) -> torch.Tensor:
        """The gradient norm `clip_grad_norm_` returned, as a plain tensor. On FSDP2 ranks it
        is a replicated DTensor that already holds the global norm (which clipped every
        shard, docs/sharded_training.md); reading it needs no communication."""
        return norm.full_tensor() if self.world > 1 else norm


ONE_RANK = Shard(0, 1)  # one process: every row, no collectives


def init_process_group(rank: int, world: int, master_addr: str, master_port: int, backend: str = "gloo") -> Shard:
    """Join the `world`-process group as `rank` (rank 0 listens on master_addr:master_port).

    With "nccl" the process uses GPU `LOCAL_RANK` (0 if unset: a Ray worker sees only
    its own GPU). Only "gloo" on CPU has been run in this project; see the doc.
    """
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world)
    return Shard(rank, world)


def shard_from_env(backend: str = "gloo") -> Shard:
    """`init_process_group` from the variables `torchrun` sets: RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT (e.g. `torchrun --nproc-per-node 2 your_script.py`)."""
    env = os.environ
    return init_process_group(int(env["RANK"]), int(env["WORLD_SIZE"]), env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                              backend)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model: modules whose class the model lists
    in `_no_split_modules` (LlamaDecoderLayer, Qwen2DecoderLayer, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class in _no_split_modules: cannot shard it")
    return layers


def shard_model(model, shard: Shard, device: str = "cpu"):
    """FSDP2: `fully_shard` each decoder layer, then the root (embeddings, final norm,
    head, and tied weights with them); returns the model, now with DTensor parameters.

    Gradients are summed across ranks, not averaged (FSDP2's default divides the
    reduce-scatter by W): `PolicyTrainer.update` has each rank back-propagate its own rows'
    part of the full-batch loss gradient, so the sum over ranks is exactly the
    single-process gradient. Forcing SUM with a divide factor of 1 uses plain SUM
    collectives, which gloo supports (a divide factor alone asks for PREMUL_SUM, which
    gloo refuses).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(torch.device(device).type, (shard.world,))
    model.to(device)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):  # set per unit: the setters do not recurse
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def full_state_dict(model, shard: Shard) -> dict[str, torch.Tensor] | None:
    """The full weights as CPU tensors on rank 0 (the model's own state-dict names,
    e.g. `model.layers.0.mlp.up_proj.weight`, loadable with strict=True into the
    unsharded model), None on the other ranks. Every rank must call it: each sharded
    tensor is all-gathered in turn, so at most one full tensor is held beyond rank 0's
    result."""
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if shard.rank == 0:
            out[name] = full.detach().to("cpu", copy=True)
    return out if shard.rank == 0 else None
