"""A KV cache with stable slots, for continuous batching on Hugging Face models.

transformers' `DynamicCache` concatenates every layer's keys and values at every step
(a copy of the whole cache per token) and has no cheap way to let one sequence leave
and another join. vLLM solves this with paged attention on GPUs; no library offers it
for transformers models on CPU, hence this small class.

Storage per layer is one preallocated buffer [S, H, C, D] (S slots, C columns). All
slots share a window of columns [start, end): step t writes column `end` for every slot
and the model attends over the window through a per-slot mask. A sequence occupies one
slot for its whole life, right-aligned at `end` when it joins; when it finishes its
mask row is cleared and the next request is written into the same slot, so nothing
moves. Leading columns that no live slot uses are dropped by moving `start` (no copy).
When `end` reaches the last column, the window moves back to column 0 in place if enough
columns before it are dead, else the buffer grows. Copies happen only then, or when the
batch is compacted once few slots are live and none are waiting.

One window for all slots means every slot attends over the oldest live sequence's
columns: with long and short contexts mixed (continuous batching refills slots; partial
rollouts continue long trajectories next to new prompts) most of a decoding step's
attention reads masked-out columns. `groups` splits the slots into contiguous ranges,
each with its own window (from the first column any of its live slots uses), and
`repack_order` says when sorting the slots by their first column (one copy, `keep`) makes
those windows markedly narrower. The decoding step stays one pass through the model:
only its attention is split, by `grouped_attention`, which the model's attention layers
call through transformers' attention interface while the step runs. Each slot's own
columns, hence its output, are the same either way.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

# The groups of the decoding step in progress, as (a, b, offset): slots [a, b) attend over
# key columns [offset, W) of the step's window. None: plain attention (every other call).
_GROUPS: ContextVar[list[tuple[int, int, int]] | None] = ContextVar("k15rl_attention_groups", default=None)
GROUPED = "k15rl_grouped_sdpa"  # the name registered with transformers' attention interfaces


def _grouped_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: scaled dot-product attention, per group of slots
    over its own columns while a grouped step runs (`grouped_attention`), else over all.
    query [S, H, 1, D]; key, value [S, H_kv, W, D]; attention_mask [S, 1, 1, W] or None."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = _GROUPS.get()
    if groups is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = [sdpa_attention_forward(module, query[a:b], key[a:b, :, o:], value[a:b, :, o:],
                                  None if attention_mask is None else attention_mask[a:b, ..., o:], **kwargs)[0]
           for a, b, o in groups]  # each [b-a, 1, H, D]
    return torch.cat(out), None  # [S, 1, H, D]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED, _grouped_sdpa)
    AttentionMaskInterface.register(GROUPED, sdpa_mask)


@contextmanager
def grouped_attention(model, groups: list[tuple[int, int, int]], start: int):
    """While one decoding step runs, the model's attention layers attend per group: slots
    [a, b) over columns [lo, end] of a `groups` entry (a, b, lo); `start` is the window's
    first column. The split runs transformers' own SDPA attention per group, so it applies
    only to models whose language model attends with it (`attn_implementation="sdpa"`, the
    default); other models, and one group, decode over the shared window (same outputs)."""
    text = model.config.get_text_config() if len(groups) > 1 else None
    if text is None or text._attn_implementation != "sdpa":
        yield
        return
    _register()
    token = _GROUPS.set([(a, b, lo - start) for a, b, lo in groups])
    text._attn_implementation = GROUPED
    try:
        yield
    finally:
        _GROUPS.reset(token)
        text._attn_implementation = "sdpa"


def _slot_layer_class():
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """One layer's view of a `SlotCache`: the model's `update` writes column `end`."""

        def __init__(self, owner: "SlotCache", k: torch.Tensor, v: torch.Tensor):
            super().__init__()
            self.owner, self.buf_k, self.buf_v = owner, k, v  # [S, H, C, D]
            self.is_initialized = True
            self.keys = self.values = k[:, :, :0]

        def update(self, key_states, value_states, *args, **kwargs):
            o = self.owner
            n = key_states.shape[-2]  # 1 when decoding
            self.buf_k[:, :, o.end:o.end + n] = key_states
            self.buf_v[:, :, o.end:o.end + n] = value_states
            self.keys = self.buf_k[:, :, o.start:o.end + n]  # [S, H, W, D] the window
            self.values = self.buf_v[:, :, o.start:o.end + n]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.owner.end - self.owner.start

    return SlotLayer


class SlotCache:
    """Keys, values and attention mask of S slots; see the module docstring."""

    def __init__(self, slots: int, layers: int, heads: int, head_dim: int, dtype: torch.dtype, columns: int,
                 end: int = 0, device: torch.device | str = "cpu"):
        from transformers import DynamicCache

        self.start = self.end = end  # the window [start, end) starts empty at column `end`
        self.mask = torch.zeros((slots, columns), dtype=torch.long)  # [S, C] 1 where a slot has a token
        layer_cls = _slot_layer_class()
        self.cache = DynamicCache()
        self.cache.layer_class_to_replicate = None
        self.cache.layers = [
            layer_cls(self, torch.zeros((slots, heads, columns, head_dim), dtype=dtype, device=device),
                      torch.zeros((slots, heads, columns, head_dim), dtype=dtype, device=device))
            for _ in range(layers)
        ]

    def first_columns(self, live: torch.Tensor) -> torch.Tensor:
        """[S] the first column each live slot uses (`end` for the others)."""
        used = self.mask[:, self.start:self.end].bool() & live[:, None]  # [S, end - start]
        first = used.int().argmax(1) + self.start  # [S] argmax: the first True
        return torch.where(used.any(1), first, torch.full_like(first, self.end))

    # What one more group costs beyond its attention reads (one more attention call per
    # layer), in slot-columns of attention reads: benchmarks/partial_rollouts.py's step-cost
    # fit on the built-in long model on CPU gives about 0.6 us per slot-column read and
    # 0.74 ms per extra group, about 1,250 columns. A rough figure: it only decides whether
    # splitting pays.
    PASS_COST = 1024

    def groups(self, live: torch.Tensor, n: int) -> list[tuple[int, int, int]]:
        """The slots cut into m <= n contiguous ranges of equal size, as (a, b, lo): lo the
        first column its live slots use (`end` for a range without any). m is the one with
        the least `window_cost` + m x PASS_COST. n = 1: one group over the shared window."""
        S = self.slots
        if n <= 1:
            return [(0, S, self.start)]
        first = self.first_columns(live)  # [S]
        m = min(range(1, n + 1), key=lambda m: self.window_cost(live, m, first) + m * self.PASS_COST)
        size = -(-S // m)
        return [(a, min(a + size, S), int(first[a:a + size].min())) for a in range(0, S, size)]

    def window_cost(self, live: torch.Tensor, n: int, first: torch.Tensor | None = None) -> int:
        """Columns a decoding step reads over all slots with `groups(live, n)`: sum of
        group size x window width (for the slots in the order of `first`, if given)."""
        first = self.first_columns(live) if first is None else first
        S, size = self.slots, -(-self.slots // n)
        return sum(min(size, S - a) * (self.end + 1 - int(first[a:a + size].min())) for a in range(0, S, size))

    def repack_order(self, live: torch.Tensor, n: int, min_gain: float = 0.125) -> torch.Tensor | None:
        """A slot order (oldest first column first, free slots last) to `keep`, when sorting
        cuts a step's `window_cost` by more than `min_gain` of the shared window's (the copy
        costs about one step's reads); None otherwise."""
        if n <= 1:
            return None
        first = self.first_columns(live)  # [S]
        order = torch.argsort(first, stable=True)  # [S]
        gain = self.window_cost(live, n, first) - self.window_cost(live, n, first[order])
        return order if gain > min_gain * self.slots * (self.end + 1 - self.start) else None

    @property
    def slots(self) -> int:
        return self.mask.shape[0]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def place(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Write one sequence's prefilled keys/values ([H, c, D] per layer) into `slot`,
        right-aligned so its last token sits just before `end`."""
        c = keys[0].shape[1]
        if c > self.end:  # not enough columns on the left: shift everything right
            self._regrow(left=c - self.end + 16, right=0)
        self.start = min(self.start, self.end - c)
        for layer, k, v in zip(self.cache.layers, keys, values):
            layer.buf_k[slot, :, self.end - c:self.end] = k
            layer.buf_v[slot, :, self.end - c:self.end] = v
        self.mask[slot] = 0
        self.mask[slot, self.end - c:self.end] = 1

    def clear(self, slot: int) -> None:
        self.mask[slot] = 0

    def take(self, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of one slot's keys and values ([H, c, D] per layer, its c columns in
        order, as `place` takes them), and clear the slot."""
        cols = self.mask[slot, self.start:self.end].nonzero().squeeze(1) + self.start  # [c] contiguous
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        keys = [layer.buf_k[slot, :, lo:hi].clone() for layer in self.cache.layers]
        values = [layer.buf_v[slot, :, lo:hi].clone() for layer in self.cache.layers]
        self.clear(slot)
        return keys, values

    def step_mask(self, live: torch.Tensor) -> torch.Tensor:
        """Open column `end` for the coming decoding step; returns the model's attention
        mask [S, end - start + 1]. A slot without a sequence attends to its own new
        column only, so its (ignored) output stays finite."""
        if self.end == self.columns:  # out of columns: reuse the dead ones before the window, or grow
            room = max(64, (self.end - self.start) // 2)
            if self.start >= room:
                self._slide()
            else:
                self._regrow(left=0, right=room)
        self.mask[~live] = 0
        self.mask[:, self.end] = 1
        return self.mask[:, self.start:self.end + 1]

    def advance(self) -> None:
        """After a decoding step: column `end` now holds every slot's newest token."""
        self.end += 1

    def trim(self, live: torch.Tensor) -> None:
        """Move `start` past leading columns that no live slot uses."""
        used = self.mask[live, self.start:self.end].any(0)  # [end - start]
        if used.any():
            self.start += int(used.nonzero()[0])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the given slots, in the given order (to shrink the batch at the tail, or
        to sort the slots for `groups`). Copies the window only: the columns from `end` on
        are written by a decoding step (or `place`) before anything attends to them, so the
        new buffer leaves them uninitialised."""
        lo, n = self.start, self.end - self.start
        self.mask = self.mask[rows, lo:].clone()
        for layer in self.cache.layers:
            S, H, C, D = layer.buf_k.shape
            k, v = layer.buf_k.new_empty((len(rows), H, C - lo, D)), layer.buf_v.new_empty((len(rows), H, C - lo, D))
            k[:, :, :n] = layer.buf_k[rows, :, lo:self.end]
            v[:, :, :n] = layer.buf_v[rows, :, lo:self.end]
            layer.buf_k, layer.buf_v = k, v
        self.start, self.end = 0, n

    def _slide(self) -> None:
        """Move the window to column 0 in place: the columns before it, which no live slot
        uses, become free columns after it. Growing only when fewer than half a window of
        such columns are free keeps the buffer within 1.5 windows (+64 columns) however
        many requests pass through it: continuous batching over many prompts (an
        evaluation) otherwise grows it by half its size each time `end` reaches the last
        column."""
        lo, n = self.start, self.end - self.start
        self.mask[:, :n] = self.mask[:, lo:self.end].clone()
        self.mask[:, n:] = 0
        for layer in self.cache.layers:  # one layer's window at a time as a temporary
            layer.buf_k[:, :, :n] = layer.buf_k[:, :, lo:self.end].clone()
            layer.buf_v[:, :, :n] = layer.buf_v[:, :, lo:self.end].clone()
        self.start, self.end = 0, n

    def _regrow(self, left: int, right: int) -> None:
        """A new buffer holding the window, with `left` free columns before it and the
        old free columns after it plus `right`."""
        lo, hi = self.start, self.end
        after = self.columns - hi + right
        self.mask = F.pad(self.mask[:, lo:hi], (left, after))
        for layer in self.cache.layers:
            layer.buf_k = F.pad(layer.buf_k[:, :, lo:hi], (0, 0, left, after))
            layer.buf_v = F.pad(layer.buf_v[:, :, lo:hi], (0, 0, left, after))
        self.start, self.end = left, left + hi - lo
