"""Per-token log-probabilities of response tokens under a causal LM.

Shapes: N samples, L = padded prompt+response length, T = padded response length.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from k15rl.errors import UserError
from k15rl.models.loading import cache_kwarg
from k15rl.models.lora import served_module
from k15rl.models.vision import ImageInputs
from k15rl.trainer.head import fused_head, fuses_head


@dataclass
class TokenBatch:
    """Prompt+response sequences, right-padded, with response positions indexed."""

    input_ids: torch.Tensor  # [N, L] prompt tokens, then response tokens, then padding
    attention_mask: torch.Tensor  # [N, L] 1 on real tokens
    gather_idx: torch.Tensor  # [N, T] position whose logits predict response token t
    response_ids: torch.Tensor  # [N, T] response tokens (padding where mask is 0)
    response_mask: torch.Tensor  # [N, T] float, 1 on real response tokens
    # Vision-language models (None for text-only batches): the distinct images of the batch
    # (the K samples of a group share their prompt's: the tower runs once per image); for
    # each image placeholder, row by row in placeholder order, the row it is in and its image;
    # and the prompts' image-token positions.
    images: ImageInputs | None = None  # U distinct images
    image_rows: torch.Tensor | None = None  # [I] long, the row of placeholder image i
    image_mask: torch.Tensor | None = None  # [N, L] bool
    image_index: torch.Tensor | None = None  # [I] long, index into `images` of placeholder image i

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor | Sequence[int]) -> "TokenBatch":
        """The sub-batch of the given rows, trimmed of columns that are padding in all of them."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        am = self.attention_mask[rows]
        L = int(am.sum(1).max())
        rm = self.response_mask[rows]
        T = max(int(rm.sum(1).max()), 1)
        images = image_rows = image_mask = image_index = None
        if self.image_rows is not None:  # each selected row's images, in the new row order
            owner, which = self.image_rows.tolist(), self.image_index.tolist()
            picked = [(new, which[j]) for new, r in enumerate(rows.tolist()) for j, o in enumerate(owner) if o == r]
            if picked:
                used = sorted({u for _, u in picked})  # the distinct images these rows show
                images = self.images.take(used)
                dev = self.image_rows.device
                image_rows = torch.tensor([new for new, _ in picked], device=dev)
                image_index = torch.tensor([used.index(u) for _, u in picked], device=dev)
                image_mask = self.image_mask[rows, :L]
        return TokenBatch(
            self.input_ids[rows, :L], am[:, :L], self.gather_idx[rows, :T], self.response_ids[rows, :T], rm[:, :T],
            images, image_rows, image_mask, image_index,
        )

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(*(None if t is None else t.to(device) for t in (
            self.input_ids, self.attention_mask, self.gather_idx, self.response_ids, self.response_mask,
            self.images, self.image_rows, self.image_mask, self.image_index)))

    def with_images(self, images: Sequence[Sequence[bytes]], tokenizer) -> "TokenBatch":
        """This batch with row i's `images[i]` (PNG bytes, its prompt's) as pixel values, from
        a `VisionTokenizer`; unchanged when no row has an image."""
        from k15rl.models.vision import image_key, prompt_image_mask

        flat = [(i, png) for i, row in enumerate(images) for png in row]
        if not flat:
            return self
        if not hasattr(tokenizer, "image_inputs"):
            raise UserError(f"{len(flat)} image(s) in the batch but the model is text-only (no vision_config)")
        dev = self.input_ids.device
        keys = [image_key(png) for _, png in flat]  # [I]
        distinct: dict[str, bytes] = {}  # image key -> PNG, in order of first appearance
        for key, (_, png) in zip(keys, flat):
            distinct.setdefault(key, png)
        place = {key: u for u, key in enumerate(distinct)}
        pixels = tokenizer.image_inputs(list(distinct.values())).to(dev)  # U images
        rows = torch.tensor([i for i, _ in flat], dtype=torch.long, device=dev)  # [I]
        index = torch.tensor([place[key] for key in keys], dtype=torch.long, device=dev)  # [I]
        prompt_lens = (self.attention_mask.sum(1) - self.response_mask.sum(1).long()).tolist()  # [N]
        mask = prompt_image_mask(self.input_ids, [(0, n) for n in prompt_lens], tokenizer.image_token_id)  # [N, L]
        return TokenBatch(self.input_ids, self.attention_mask, self.gather_idx, self.response_ids,
                          self.response_mask, pixels, rows, mask, index)


def collate(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int) -> TokenBatch:
    """Pack (prompt, response) token lists into a right-padded TokenBatch."""
    n = len(prompt_ids)
    L = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    T = max(max((len(r) for r in response_ids), default=1), 1)
    input_ids = torch.full((n, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, L), dtype=torch.long)
    gather_idx = torch.zeros((n, T), dtype=torch.long)
    resp = torch.full((n, T), pad_id, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
        if r:
            resp[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1.0
            # token t of the response sits at len(p)+t and is predicted from len(p)+t-1
            gather_idx[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
    return TokenBatch(input_ids, attention_mask, gather_idx, resp, mask)


def token_logprobs(model, batch: TokenBatch, temperature: float = 1.0, share_prompts: bool = False) -> torch.Tensor:
    """log softmax(logits / temperature) of each response token: [N, T], 0 on padding.

    The policy that samples at temperature T is softmax(logits / T); the trainer scores
    tokens under the same distribution so old and new log-probs are comparable.
    `share_prompts` (for a model that `shares_prompts`): each distinct prompt runs through
    the model once, its rows' responses on its keys and values (`_shared_prompt_logprobs`).
    """
    if share_prompts:
        plen, which, distinct = _distinct_prompts(batch)
        if len(distinct) < len(plen):  # some rows repeat a prompt; else one plain pass does the same work
            return _shared_prompt_logprobs(model, batch, plen, which, distinct, temperature)  # [N, T]
    tokens = {"input_ids": batch.input_ids}  # [N, L]
    # The head runs only where it is needed. Where the model takes per-row positions, on
    # exactly the positions that predict response tokens: the logits come out [N, T, V], no
    # copy of them gathered (and no zero-filled [N, L, V] gradient for that gather in the
    # backward). Else from the first such position on: the prompts' logits ([N, P, V], most
    # of [N, L, V] for long prompts and large vocabularies) are never made. Row-wise the
    # same matmul: the kept logits do not change.
    positions = batch.images is None and _keeps_logits_at(model)
    first = 0
    if positions:
        tokens["logits_to_keep"] = batch.gather_idx  # [N, T]
    elif bool(batch.response_mask.any()) and _keeps_logits(model):
        first = int(batch.gather_idx[batch.response_mask > 0].min())
        if first:
            tokens["logits_to_keep"] = batch.input_ids.shape[1] - first
    if positions and fuses_head(model):  # the head fused with the log-probs: no [N, T, V] logits (k15rl.trainer.head)
        with fused_head(model, batch.response_ids, temperature):
            out = model(**tokens, attention_mask=batch.attention_mask, use_cache=False)
        return out.logits * batch.response_mask  # [N, T]
    if batch.images is None:
        out = model(**tokens, attention_mask=batch.attention_mask, use_cache=False)
    else:  # the prompts' image tokens embedded as their images' features (inside the forward: FSDP)
        from k15rl.models.vision import images_in_embeddings, rope_positions

        if batch.images.grid_thw is not None:  # [3, N, L]: multi-row rotary positions (Qwen2-VL-style)
            tokens["position_ids"] = rope_positions(model, batch.input_ids, batch.attention_mask, batch.image_mask,
                                                    batch.images.grid_thw[batch.image_index])[0]
        with images_in_embeddings(model, batch.images, batch.image_mask, batch.image_index):
            out = model(**tokens, attention_mask=batch.attention_mask, use_cache=False)
    if positions:  # [N, T, V]: position t predicts response token t (padding: position 0, masked below)
        return _response_logprobs(out.logits, batch, temperature)
    hidden_logits = out.logits  # [N, L - first, V]
    rows = torch.arange(hidden_logits.shape[0], device=hidden_logits.device).unsqueeze(-1)  # [N, 1]
    idx = (batch.gather_idx - first).clamp(min=0)  # [N, T] (padding: any kept position, masked below)
    return _response_logprobs(hidden_logits[rows, idx], batch, temperature)  # [N, T, V] a copy


def _response_logprobs(logits: torch.Tensor, batch: TokenBatch, temperature: float) -> torch.Tensor:
    """[N, T] log-probs of the response tokens from the logits [N, T, V] that predict them,
    computed in float32 whatever the logits' dtype (bf16 under autocast)."""
    if temperature != 1.0:  # x / 1 == x exactly: no [N, T, V] copy (and none in the backward) at T = 1
        logits = logits.float() / temperature
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # [N, T, V]: the cast inside, no float copy
    tok = torch.gather(logp, 2, batch.response_ids.unsqueeze(-1)).squeeze(-1)  # [N, T]
    return tok * batch.response_mask


def shares_prompts(model) -> bool:
    """Whether `token_logprobs(..., share_prompts=True)` can run on `model`: a text-only
    causal LM (a VLM's rows may hold images) whose forward keeps its KV cache while
    training (activation checkpointing drops the cache). It then shares the prompts of a
    batch in which some rows repeat a prompt, and runs one plain pass otherwise."""
    base = served_module(model)
    config = getattr(base, "config", None)
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    return (config is not None and getattr(config, "vision_config", None) is None and not checkpointing
            and cache_kwarg(base) is not None)


def _distinct_prompts(batch: TokenBatch) -> tuple[list[int], list[int], dict[tuple[int, ...], int]]:
    """Each row's prompt tokens [N]; the index of its prompt but the last token [N]; those
    distinct prompts (tokens -> index, in order of first appearance)."""
    plen = (batch.attention_mask.sum(1) - batch.response_mask.sum(1)).long().tolist()  # [N]
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(batch.input_ids[i, : plen[i] - 1].tolist()), len(distinct))
             for i in range(len(plen))]
    return plen, which, distinct


def _shared_prompt_logprobs(model, batch: TokenBatch, plen: list[int], which: list[int],
                            distinct: dict[tuple[int, ...], int], temperature: float) -> torch.Tensor:
    """The response tokens' log-probs [N, T], each distinct prompt run once.

    The K samples of a group share their prompt, and a prompt is often most of a row
    (few-shot chat prompts: 126 of SmolLM2's 143 tokens). Two forwards instead of one:
    (1) the distinct prompts but their last token, right-padded ([U, P]), keeping their
    keys and values; (2) every row's last prompt token and response ([N, 1 + T]) on its
    prompt's keys and values (indexed per row, so the backward sums the rows' gradients
    into the prompt's one pass), rotary positions continuing the prompt's, prompt padding
    masked. The same attention as one pass over [prompt, response]: the log-probs equal
    the plain path's up to rounding (tests/test_update.py). Written here because
    transformers shares prefixes only in generation, not in a training forward.
    """
    from transformers import DynamicCache

    base = served_module(model)
    kw = cache_kwarg(base)
    N, T = batch.response_ids.shape
    dev = batch.input_ids.device
    U, P = len(distinct), max(1, max(len(k) for k in distinct))
    prefix_ids = torch.zeros((U, P), dtype=torch.long, device=dev)  # [U, P] right-padded
    prefix_mask = torch.zeros((U, P), dtype=torch.long, device=dev)  # [U, P] 1 on prompt tokens
    for key, u in distinct.items():
        prefix_ids[u, : len(key)] = torch.tensor(key, dtype=torch.long)
        prefix_mask[u, : len(key)] = 1
    compute_mask = prefix_mask.clone()
    compute_mask[:, 0] = 1  # a one-token prompt has no prefix: a padding column keeps its row finite (masked in (2))
    positions = torch.arange(P, device=dev).expand(U, P)  # [U, P]
    cache = DynamicCache()
    model(input_ids=prefix_ids, attention_mask=compute_mask, position_ids=positions, use_cache=True,
          logits_to_keep=1, **{kw: cache})
    rows = torch.tensor(which, dtype=torch.long, device=dev)  # [N]
    per_row = DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):  # [U, H, P, D] -> [N, H, P, D]
        # index_select, not keys[rows]: the backward of advanced indexing is index_put_ with
        # accumulate, which on CPU with several threads adds with atomics in any order (runs
        # then differ in the last bits); index_select's backward, index_add_, sums in order
        per_row.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), layer_idx)
    last = batch.input_ids[torch.arange(N, device=dev), torch.tensor(plen, device=dev) - 1]  # [N]
    ids = torch.cat([last[:, None], batch.response_ids], 1)  # [N, 1 + T]
    mask = torch.cat([prefix_mask[rows], torch.ones((N, 1), dtype=torch.long, device=dev),
                      batch.response_mask.long()], 1)  # [N, P + 1 + T]
    pos = (torch.tensor(plen, device=dev) - 1)[:, None] + torch.arange(1 + T, device=dev)  # [N, 1 + T]
    if fuses_head(model):  # the head fused with the log-probs (k15rl.trainer.head); the last column predicts nothing
        targets = torch.cat([batch.response_ids, batch.response_ids[:, :1]], 1)  # [N, 1 + T]
        with fused_head(model, targets, temperature):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: per_row})
        return out.logits[:, :T] * batch.response_mask  # [N, T]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: per_row})
    return _response_logprobs(out.logits[:, :T], batch, temperature)  # position t predicts response token t


def _keeps_logits_at(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` as per-row positions [N, T]: it
    slices with transformers' `slice_logits_to_keep` (transformers 5.x causal LMs), which
    takes a 2-D integer tensor as each row's positions. Older or custom forwards index
    `hidden[:, logits_to_keep]` and would read such a tensor wrongly."""
    base = served_module(model)
    return _forward_slices_per_row(type(base))


@functools.cache
def _forward_slices_per_row(cls) -> bool:
    try:
        return "slice_logits_to_keep(" in inspect.getsource(cls.forward)
    except (OSError, TypeError):  # no source (compiled, dynamic): the safe path
        return False


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs and
    VLMs do; a peft model passes it on to its base model)."""
    base = served_module(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters
