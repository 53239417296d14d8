"""The training scaffold that SFT (long-CoT warm-up, report §2.2) and DPO (long2short,
report §2.4) share: AdamW, a linear warm-up then cosine decay of the learning rate,
gradient clipping, the bf16 autocast choice, a progress bar and the loss of every step.

Each caller keeps its own batches and its own loss: it hands `train_steps` the list of
batches of all epochs (drawn in order, so its random draws are those of an epoch loop)
and a function from one batch to `(loss, metrics)`. One step is

    loss, metrics = loss_fn(batch); zero_grad; backward; clip; AdamW step; schedule step
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence, TypeVar

import torch

B = TypeVar("B")
LossFn = Callable[[B], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class StepSettings:
    """Optimizer and schedule of one `train_steps` call."""

    lr: float
    warmup_frac: float  # linear warm-up over this fraction of the steps (at least one step)
    min_lr_frac: float = 1.0  # cosine decay to this fraction of lr (1.0: constant after the warm-up)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm


@dataclass
class Step:
    """What one optimizer step gives back: its loss, the gradient norm before clipping,
    and the metrics its loss function returned."""

    loss: float
    grad_norm: float
    metrics: dict[str, float] = field(default_factory=dict)


def lr_factor(step: int, warmup: int, total: int, min_lr_frac: float) -> float:
    """Learning-rate multiplier at `step` (0-based) of `total`: linear warm-up over
    `warmup` steps, then cosine decay to `min_lr_frac`; with `min_lr_frac` = 1 it stays at 1.

    >>> [round(lr_factor(s, 2, 10, 0.1), 3) for s in (0, 1, 5, 10)]
    [0.5, 0.978, 0.55, 0.1]
    >>> [lr_factor(s, 4, 10, 1.0) for s in (0, 3, 9)]
    [0.25, 1.0, 1.0]
    """
    cosine = min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    return min((step + 1) / warmup, cosine)


def autocast(bf16: bool, device: torch.device | str) -> ContextManager:
    """bf16 autocast on `device` (the model's: `k15rl.models.loading.model_device`) when
    `bf16` (about 3x faster training on this CPU, fp32 master weights kept), else nothing.
    Callers wrap their forward pass in it, not the loss."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()


def train_steps(
    model,
    batches: Sequence[B],
    loss_fn: LossFn,
    settings: StepSettings,
    *,
    desc: str,
    postfix: Callable[[Step], dict[str, str]] | None = None,
) -> list[Step]:
    """One AdamW step per batch on `model` (trained in place, left in eval mode); the
    schedule's length is the number of batches. `postfix` gives the progress bar's
    fields of a step (default: its loss)."""
    from tqdm import tqdm

    total = len(batches)
    warmup = max(1, int(settings.warmup_frac * total))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, settings.min_lr_frac))
    model.train()
    steps = []
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)
    for batch in batches:
        loss, metrics = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
        opt.step()
        sched.step()
        step = Step(loss.item(), grad_norm, metrics)
        steps.append(step)
        bar.update(1)
        bar.set_postfix(postfix(step) if postfix else {"loss": f"{step.loss:.3f}"})
    bar.close()
    model.eval()
    return steps
