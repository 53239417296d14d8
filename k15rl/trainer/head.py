"""The LM head fused with the log-probs of the tokens it predicts, in chunks of rows.

A training forward needs log pi(y_t | ...) of one token per position, not the logits:
[M, V] of them (M response tokens, V the vocabulary: 49,152 for SmolLM2, 152k for Qwen)
made, cast to float32 for the log-softmax, and kept for the backward are most of an
update's memory traffic on a CPU (fresh pages at each step) and a large share of its
peak memory for long responses. `HeadLogprobs` makes them a chunk of rows at a time
into two buffers it reuses: the forward keeps only each row's log-sum-exp, and the
backward recomputes the chunk's logits (one more head matmul) to form the gradient
softmax - one-hot. Same numbers as the unfused head (the logits in the matmul's dtype,
the softmax in float32; tests/test_head.py). Written here because the libraries that
fuse the head with its loss (Liger-Kernel, cut-cross-entropy) are GPU kernels of a
cross-entropy loss, not of per-token log-probs, and none runs on a CPU.

`fused_head(model, targets, temperature)` swaps it in for the LM head of a transformers
causal LM whose forward returns `self.lm_head(hidden)` unchanged (`fuses_head`), for one
forward: the output's `logits` are then the log-probs [N, X] of `targets` [N, X].
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Iterator

import torch

from k15rl.models.lora import served_module

CHUNK_BYTES = 32 << 20  # one chunk's float32 logits: 32 MiB
ROW_BLOCK = 8192  # the backward's rows at a time: the weight's gradient is one matmul per vocabulary chunk per block


class HeadLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / temperature)[target]: hidden [M, H], weight [V, H],
    targets [M] -> [M] float32. The matmuls in `dtype` (bf16 under autocast), the softmax
    in float32, no [M, V] tensor kept.

    The forward takes chunks of rows (all of the vocabulary: the log-sum-exp in one
    reduction, in log_softmax's order). The backward takes blocks of rows and, within a
    block, chunks of the vocabulary: each chunk's rows of the weight's gradient are then
    one matmul over the block's rows (a row chunk would re-add a [V, H] gradient per chunk).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float,
                dtype: torch.dtype) -> torch.Tensor:
        h, w = hidden.to(dtype), weight.to(dtype)  # [M, H], [V, H]
        M, V = h.shape[0], w.shape[0]
        out = torch.empty(M, dtype=torch.float32, device=h.device)  # [M]
        lse = torch.empty(M, dtype=torch.float32, device=h.device)  # [M] log-sum-exp of each row's logits
        rows = max(1, CHUNK_BYTES // (4 * V))
        bufs = _Buffers(min(rows, M) * V, dtype, h.device)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, M, rows):
                e = min(s + rows, M)
                logits = bufs.logits(h[s:e], w, temperature)  # [c, V] float32
                top = logits.amax(1)  # [c]
                picked = logits.gather(1, targets[s:e, None]).squeeze(1)  # [c]
                log_sum = logits.sub_(top[:, None]).exp_().sum(1).log_()  # [c]
                out[s:e] = (picked - top) - log_sum  # log_softmax's order of operations
                lse[s:e] = log_sum + top
        ctx.save_for_backward(h, w, targets, lse)
        ctx.temperature, ctx.dtypes = temperature, (hidden.dtype, weight.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # grad [M]
        h, w, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        M, V = h.shape[0], w.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if want_h else None  # [M, H]
        g_w = torch.empty(w.shape, dtype=torch.float32, device=w.device) if want_w else None  # [V, H]
        grad = grad.float()
        with torch.autocast(h.device.type, enabled=False):
            for r0 in range(0, M, ROW_BLOCK):
                r1 = min(r0 + ROW_BLOCK, M)
                hb, gb, tb, lb = h[r0:r1], grad[r0:r1], targets[r0:r1], lse[r0:r1]
                cols = max(1, CHUNK_BYTES // (4 * (r1 - r0)))
                bufs = _Buffers((r1 - r0) * min(cols, V), h.dtype, h.device)
                for v0 in range(0, V, cols):
                    v1 = min(v0 + cols, V)
                    # d logp[target] / d logits = (one_hot(target) - softmax) / temperature
                    d = bufs.logits(hb, w[v0:v1], t)  # [r, v] float32
                    d.sub_(lb[:, None]).exp_().mul_(-gb[:, None])
                    hit = ((tb >= v0) & (tb < v1)).nonzero().squeeze(1)  # rows whose target is in this chunk
                    d[hit, tb[hit] - v0] += gb[hit]
                    if t != 1.0:
                        d.div_(t)
                    d_raw = bufs.raw[: d.numel()].view_as(d).copy_(d)  # [r, v] in the matmul's dtype
                    if want_h:
                        g_h[r0:r1].add_(d_raw @ w[v0:v1])  # [r, H]
                    if want_w:
                        part = d_raw.t() @ hb  # [v, H]
                        g_w[v0:v1].copy_(part) if r0 == 0 else g_w[v0:v1].add_(part)
        hidden_dtype, weight_dtype = ctx.dtypes
        return (None if g_h is None else g_h.to(hidden_dtype), None if g_w is None else g_w.to(weight_dtype),
                None, None, None)


class _Buffers:
    """A chunk's logits, made into two flat buffers allocated once (a fresh [c, V] tensor per
    chunk would fault its pages in again each time: most of the unfused head's cost on a CPU)."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device):
        self.raw = torch.empty(numel, dtype=dtype, device=device)  # the matmul's output
        self.f32 = torch.empty(numel, dtype=torch.float32, device=device)

    def logits(self, h: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
        """logits / temperature of rows h [c, H] against w [v, H]: [c, v] float32, contiguous."""
        n = h.shape[0] * w.shape[0]
        raw = torch.mm(h, w.t(), out=self.raw[:n].view(h.shape[0], w.shape[0]))  # [c, v]
        f32 = self.f32[:n].view_as(raw).copy_(raw)
        return f32.div_(temperature) if temperature != 1.0 else f32


def fuses_head(model) -> bool:
    """Whether `fused_head` can run on `model`: its LM head a plain `nn.Linear` without bias
    whose output the forward returns as the logits unchanged (transformers 5.x causal LMs
    that slice with `slice_logits_to_keep`; not those that scale or soft-cap the logits)."""
    base = served_module(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return type(head) is torch.nn.Linear and head.bias is None and _returns_head_output(type(base))


@functools.cache
def _returns_head_output(cls) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):  # no source: the unfused head
        return False
    return ("slice_logits_to_keep(" in src and src.count("logits = ") == 1
            and "logits = self.lm_head(hidden_states)" in src)


@contextmanager
def fused_head(model, targets: torch.Tensor, temperature: float) -> Iterator[None]:
    """For the forwards inside: the LM head returns the log-probs [N, X] of `targets` [N, X]
    (one per position the forward keeps) in place of the logits [N, X, V]."""
    head = served_module(model).get_output_embeddings()

    def forward(hidden: torch.Tensor) -> torch.Tensor:  # [N, X, H] -> [N, X]
        dev = hidden.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else head.weight.dtype
        N, X, H = hidden.shape
        lp = HeadLogprobs.apply(hidden.reshape(N * X, H), head.weight, targets.reshape(N * X), temperature, dtype)
        return lp.view(N, X)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # the class's forward again
