"""Rollout engines: sample responses and record each token's log-probability (report §2.6).

The loop sees engines only through the `RolloutEngine` protocol: a list of plain
`GenerationRequest`s in, a list of `Segment`s out, and `load_weights(state_dict)` to
receive the trainer's new weights each iteration. An engine can therefore live in the
trainer's process, in another process or on a Ray actor.

`HFEngine` runs any Hugging Face causal LM with continuous batching: a fixed number of
slots, and the moment a sequence finishes (EOS, stop string, budget, repeat) its slot
takes the next waiting request, so no compute is spent behind finished sequences.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import torch

from k15rl.config import RolloutConfig
from k15rl.errors import UserError
from k15rl.malloc import release_free_memory
from k15rl.models.loading import cache_kwarg, model_device
from k15rl.models.vision import (embed_with_images, image_features, image_key, image_token_id, prompt_image_mask,
                                 rope_positions)
from k15rl.rollout.slots import SlotCache, grouped_attention
from k15rl.types import GenerationRequest, Segment


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding.

    Repeat detection (report §2.6.2) stops a sequence whose tail is one n-gram
    (n <= repeat_ngram) repeated at least `repeat_times` times in a row, covering at
    least `repeat_min_tokens` tokens; repeat_ngram 0 turns it off.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    seed: int = 0
    repeat_ngram: int = 0
    repeat_times: int = 4
    repeat_min_tokens: int = 32


class RolloutEngine(Protocol):
    """What the loop asks of an engine (HFEngine, VLLMEngine, the Ray workers' EnginePool).
    `token_budget` (rollout.iteration_tokens; 0: none) is passed only when set, so an engine
    without one serves the rest. HFEngine's `generate` also takes `more`, a source to pull
    requests from as slots free up (the Ray workers use it where the engine has it)."""

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams,
                 token_budget: int = 0) -> list[Segment]: ...

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None: ...

    def sleep(self) -> None:
        """Free device memory while the trainer uses the device (distributed.colocate)."""
        ...

    def wake_up(self) -> None: ...


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(logits / temperature), optionally top-p filtered.

    logits: [B, V]. Returns (tokens [B], logprobs [B]) where logprobs are under
    softmax(logits / temperature) before top-p truncation: the distribution the trainer
    recomputes. temperature 0: argmax, log-prob under softmax(logits).
    """
    logits = logits.float()
    if temperature == 0:
        tok = logits.argmax(-1)  # [B]
        return tok, torch.log_softmax(logits, -1).gather(1, tok[:, None]).squeeze(1)
    logp = torch.log_softmax(logits / temperature, -1)  # [B, V]
    probs = logp.exp()  # [B, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)  # [B, V]
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # [B, V] keep the smallest set with mass >= top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)  # [B, V]
        probs = torch.zeros_like(probs).scatter(1, order, sorted_p)  # [B, V] back in vocabulary order
    tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [B]
    return tok, logp.gather(1, tok[:, None]).squeeze(1)


class RepeatDetector:
    """Vectorised repeat detection over a batch of sequences (report §2.6.2).

    For every period p = 1..n it keeps, per row, how many of the latest tokens equal the
    token p positions earlier (`runs[:, p-1]`). The tail is p-periodic over
    runs + p tokens, i.e. it is one p-gram repeated (runs + p) / p times. A row repeats
    when, for some p, that span covers both `times` copies and `min_tokens` tokens.
    One step costs O(B * n), whatever the sequence lengths.

    >>> d = RepeatDetector(ngram=3, times=3, min_tokens=6)
    >>> d.add_rows([[]])
    >>> [bool(d.step(torch.tensor([t]))[0]) for t in [1, 2, 9, 1, 2, 9, 1, 2, 9]]
    [False, False, False, False, False, False, False, False, True]
    """

    def __init__(self, ngram: int, times: int, min_tokens: int):
        self.n = ngram
        periods = torch.arange(1, ngram + 1)  # [n]
        self.need = torch.maximum(periods * times, torch.full_like(periods, min_tokens))  # [n] span to flag
        self.periods = periods
        self.hist = torch.zeros((0, ngram), dtype=torch.long)  # [B, n] last n tokens, newest last
        self.runs = torch.zeros((0, ngram), dtype=torch.long)  # [B, n]

    def _state(self, prefixes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n
        hist = torch.full((len(prefixes), n), -1, dtype=torch.long)  # [B, n]
        runs = torch.zeros((len(prefixes), n), dtype=torch.long)  # [B, n]
        for i, prefix in enumerate(prefixes):
            h, r = [-1] * n, [0] * n
            for t in prefix:  # the same recurrence as `step`, in plain Python, once per row
                r = [(r[p] + 1) if h[n - 1 - p] == t else 0 for p in range(n)]
                h = h[1:] + [t]
            hist[i], runs[i] = torch.tensor(h), torch.tensor(r)
        return hist, runs

    def add_rows(self, prefixes: Sequence[Sequence[int]]) -> None:
        """Append rows whose responses so far are `prefixes` (continued segments keep their
        repeat state: a loop that straddles a cut is still caught)."""
        hist, runs = self._state(prefixes)
        self.hist = torch.cat([self.hist, hist])
        self.runs = torch.cat([self.runs, runs])

    def reset_rows(self, rows: Sequence[int], prefixes: Sequence[Sequence[int]]) -> None:
        """Start rows `rows` afresh from `prefixes`."""
        hist, runs = self._state(prefixes)
        self.hist[list(rows)], self.runs[list(rows)] = hist, runs

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row (tok [B]); returns which rows now repeat ([B] bool)."""
        same = self.hist.flip(1) == tok[:, None]  # [B, n] column p-1: token p positions back
        self.runs = (self.runs + 1) * same  # [B, n]
        self.hist = torch.cat([self.hist[:, 1:], tok[:, None]], 1)  # [B, n]
        return (self.runs + self.periods >= self.need).any(1)

    def select(self, keep: torch.Tensor) -> None:
        self.hist, self.runs = self.hist[keep], self.runs[keep]


@dataclass
class _Row:
    """Book-keeping for one request while it holds a slot."""

    index: int  # position in the caller's request list
    budget: int
    context: list[int] = field(default_factory=list)  # prompt + earlier segments' tokens
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    keep: bool = False  # finished at its budget with keep_kv: its KV is kept after this step


@dataclass
class _KeptKV:
    """A cut segment's KV cache, kept for its continuation (GenerationRequest.keep_kv)."""

    context: list[int]  # the tokens it covers: prompt, earlier segments, this segment
    keys: list[torch.Tensor]  # per layer [H, c, D]
    values: list[torch.Tensor]  # per layer [H, c, D]
    logits: torch.Tensor  # [V] next-token logits after the context
    offset: int  # rotary offset of the tokens that follow (M-RoPE models; else 0)


class _Slots:
    """The decoding slots of one `HFEngine.generate` call: the request each holds, its next
    token's position and rotary offset, its next-token logits, and the KV cache of all of
    them (created by the first admission, when the model's cache shapes are known)."""

    def __init__(self, S: int, detector: RepeatDetector | None):
        self.rows: list[_Row | None] = [None] * S  # the request each slot holds
        self.pos = torch.zeros(S, dtype=torch.long)  # [S] position of each slot's next token
        self.offset = torch.zeros(S, dtype=torch.long)  # [S] its rotary offset (M-RoPE models; else 0)
        self.logits: torch.Tensor | None = None  # [S, V] next-token logits of each slot
        self.kv: SlotCache | None = None
        self.detector = detector  # repeat detection, a row per slot
        if detector:
            detector.add_rows([[]] * S)

    def free(self) -> list[int]:
        return [j for j, r in enumerate(self.rows) if r is None]

    def any_live(self) -> bool:
        return any(r is not None for r in self.rows)

    def start(self, layers: int, heads: int, head_dim: int, dtype, vocab: int, logits_dtype, *, columns: int,
              end: int, device) -> None:
        """Create the KV cache and logits on the first admission (a no-op afterwards)."""
        if self.kv is None:
            S = len(self.rows)
            self.kv = SlotCache(S, layers, heads, head_dim, dtype, columns=columns, end=end, device=device)
            self.logits = torch.zeros((S, vocab), dtype=logits_dtype)

    def put(self, j: int, keys: list[torch.Tensor], values: list[torch.Tensor], offset, logits: torch.Tensor) -> None:
        """Slot j takes a context's KV (per layer [H, c, D]), rotary offset and next-token logits [V]."""
        self.kv.place(j, keys, values)
        self.offset[j], self.logits[j] = offset, logits

    def reorder(self, order: torch.Tensor) -> None:
        """Keep slots `order` ([S'] indices), in that order."""
        self.kv.keep(order)
        self.rows = [self.rows[j] for j in order.tolist()]
        self.pos, self.offset, self.logits = self.pos[order], self.offset[order], self.logits[order]
        if self.detector:
            self.detector.select(order)


class HFEngine:
    """Continuous batching with a KV cache on any Hugging Face causal LM.

    Up to `max_batch` sequences decode together, each in a slot of a `SlotCache`
    (explicit position ids, per-slot attention masks). The moment a sequence finishes,
    its slot is cleared and waiting requests are prefilled together and written into
    free slots; nothing else moves. Columns no live slot uses are dropped from the
    attention window, and once nobody is waiting and half the slots are empty the batch
    shrinks, so finished sequences cost (almost) nothing. Works with models whose KV
    cache is made of full-attention layers (Llama, Qwen2, Mistral without sliding
    window, SmolLM, ...).

    Partial rollouts (report §2.6.2) continue a cut trajectory in a later call with its
    prompt and earlier tokens as the context. Re-encoding that context costs a prefill of
    every token so far, each time the trajectory is continued: for long trajectories cut
    into short segments, more than the new tokens themselves. A request with `keep_kv`
    that ends at its budget leaves its slot's KV cache (and next-token logits) here
    instead; the next call's request with the same id and the same context takes it into
    a slot without a prefill. That KV was computed by the weights of its own call: after
    `load_weights` the continuation attends to a prefix encoded by the previous policy,
    which is why rollout.keep_kv asks the trainer to recompute pi_i's log-probs. Kept KV
    not taken by the next call that keeps any is dropped.

    The model runs where its parameters are (`k15rl.models.loading.on_device`); the
    bookkeeping and the sampling (its random stream) stay on the CPU, so a seed draws the
    same tokens on every device up to the logits' numerics.
    """

    def __init__(self, model, tokenizer, max_batch: int = RolloutConfig.max_batch,
                 prefill_tokens: int = RolloutConfig.prefill_tokens,
                 attention_groups: int = RolloutConfig.attention_groups):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens  # admitted prompts are prefilled in chunks this large
        self.attention_groups = attention_groups  # slots decoded in this many windows (SlotCache.groups)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache_kw = cache_kwarg(model) or "past_key_values"  # `cache` in transformers >= 5.x
        # Vision-language models: each image's features, computed once per `generate` call and
        # reused by every sample of its group (image content hash -> [tokens, hidden]), and
        # its patch grid for multi-row rotary positions (hash -> [3]; Qwen2-VL-style towers).
        self._features: dict[str, torch.Tensor] = {}
        self._grids: dict[str, torch.Tensor] = {}
        self._kept: dict[str, _KeptKV] = {}  # request id -> its cut segment's KV (keep_kv)

    @classmethod
    def from_config(cls, model, tokenizer, cfg: RolloutConfig) -> "HFEngine":
        """The engine `rollout.*` describes (max_batch, prefill_tokens, attention_groups) on `model`."""
        return cls(model, tokenizer, max_batch=cfg.max_batch, prefill_tokens=cfg.prefill_tokens,
                   attention_groups=cfg.attention_groups)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams,
                 more: Callable[[int], Sequence[GenerationRequest]] | None = None,
                 token_budget: int = 0) -> list[Segment]:
        """One Segment per request, in the order given. Requests are admitted in that order.

        `token_budget` (0: none): the call's output-token budget (report §2.6.2, "a fixed
        output token budget"). Once the live slots have sampled that many tokens in all,
        every sequence still running ends with finish reason "length" (a cut; with
        `keep_kv` its KV cache is kept), and requests not yet admitted get an empty
        "length" segment: nothing of theirs was generated. So more requests than slots
        keep the slots full until the budget is spent, instead of draining behind the
        longest sequence. It may be overshot by at most the slots' count minus one.

        `more(n)`: a source of further requests, asked for at most n whenever slots are
        free and nothing waits; their segments follow those of `requests`, in the order
        pulled. An empty answer ends it. This is how a rollout worker pulls work from the
        master (report §2.6.2): a worker busy with long trajectories takes no new prompts
        until it has room, while the others take them.

        The model generates in eval mode (no dropout) and goes back to its former mode after:
        it may be the trainer's own (`placement.shares_weights`). The KV cache's freed heap
        pages go back to the operating system after (`release_free_memory`).
        """
        training = self.model.training
        self.model.eval()
        try:
            return self._generate(list(requests), params, more, token_budget)
        finally:
            self.model.train(training)
            release_free_memory()

    def _generate(self, requests: list[GenerationRequest], params: SamplingParams,
                  more: Callable[[int], Sequence[GenerationRequest]] | None, token_budget: int = 0) -> list[Segment]:
        gen = torch.Generator().manual_seed(params.seed)
        waiting = deque(range(len(requests)))
        out: list[Segment | None] = [None] * len(requests)
        S = self.max_batch if more else min(self.max_batch, len(requests))
        detector = RepeatDetector(params.repeat_ngram, params.repeat_times, params.repeat_min_tokens) \
            if params.repeat_ngram > 0 else None
        slots = _Slots(S, detector)
        kept, self._kept = self._kept, {}  # continuations take theirs from `kept`; new cuts go to _kept
        spent = 0  # tokens sampled in this call (token_budget)
        # columns the slot cache starts with after the first prompts' width: room for the
        # longest response; with a token budget, for the steps the budget lasts with every
        # slot busy (the cache slides or grows past it when needed, SlotCache.step_mask)
        room = 1 + min(params.max_new_tokens, -(-token_budget // S) if token_budget else params.max_new_tokens)
        while waiting or more or slots.any_live():
            # 1. admit waiting requests into free slots: prefill them together, write their KV in
            free = slots.free()
            if free and not waiting and more:
                pulled = list(more(len(free)))
                waiting.extend(range(len(requests), len(requests) + len(pulled)))
                requests += pulled
                out += [None] * len(pulled)
                more = more if pulled else None
            admitted = bool(waiting and free)
            if admitted:
                idx = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
                self._admit(slots, requests, idx, free, kept, room, params)
            if not slots.any_live():  # the source ran dry before anything was admitted
                break
            # 2. sample one token for every live slot; a spent budget cuts every sequence and
            # ends the requests never admitted empty, and nothing more is pulled
            tok_all, live, n = self._sample(slots, params, gen)
            spent += n
            spent_all = bool(token_budget) and spent >= token_budget
            if spent_all:
                for r in waiting:
                    out[r] = Segment.not_started()
                waiting.clear()
                more = None
            finished = self._finish(slots, tok_all, live, requests, out, params, spent_all)
            if not live.any():
                continue
            # 3. finished slots: drop unused leading columns; with nobody waiting and few
            # slots live, shrink the batch so empty slots cost nothing; with attention groups,
            # sort the slots by age when that narrows the groups' windows enough
            order = None
            if finished:
                slots.kv.trim(live)
                if not waiting and not more and int(live.sum()) <= len(slots.rows) // 2:
                    order = live.nonzero().squeeze(1)
            if order is None and (finished or admitted):
                order = slots.kv.repack_order(live, self.attention_groups)
            if order is not None:
                slots.reorder(order)
                tok_all, live = tok_all[order], live[order]
            # 4. one decoding step for every slot (empty ones are ignored)
            self._decode(slots, tok_all, live)
            for j, row in enumerate(slots.rows):  # segments cut with keep_kv: their KV, now complete, is kept
                if row is not None and row.keep:
                    keys, values = slots.kv.take(j)
                    self._kept[requests[row.index].id] = _KeptKV(row.context + row.tokens, keys, values,
                                                                 slots.logits[j].clone(), int(slots.offset[j]))
                    slots.rows[j] = None
        if not any(r.keep_kv for r in requests):  # e.g. an evaluation between two iterations
            self._kept.update(kept)  # leaves the kept KV for the next rollout; else what was not taken goes
        self._features.clear()  # bounded memory: features live for one call
        self._grids.clear()
        return out  # type: ignore[return-value]

    def _admit(self, slots: _Slots, requests: list[GenerationRequest], idx: list[int], free: list[int],
               kept: dict[str, _KeptKV], room: int, params: SamplingParams) -> None:
        """Requests `idx` into slots `free[:len(idx)]`: their KV kept from a cut segment, or
        prefilled in chunks. A context (with its images) shared by several requests, the K
        samples of a group, is prefilled once and its KV written into each of their slots."""
        contexts = [list(requests[i].prompt_ids) + list(requests[i].prefix_ids) for i in idx]
        width = max(len(c) for c in contexts)
        dev = model_device(self.model)
        reused = [self._take_kept(kept, requests[i].id, c) for i, c in zip(idx, contexts)]
        key = [(tuple(c), tuple(requests[i].images)) for i, c in zip(idx, contexts)]
        same: dict[tuple, list[int]] = {}
        for n, k in enumerate(reused):
            if k is None:
                same.setdefault(key[n], []).append(n)
        fresh = [ns[0] for ns in same.values()]  # one request of each distinct context
        for lo, hi in prefill_chunks([len(contexts[n]) for n in fresh], self.prefill_tokens):
            ns = fresh[lo:hi]
            pre, logits, offsets = self._prefill([contexts[n] for n in ns], [requests[idx[n]].images for n in ns],
                                                 [len(requests[idx[n]].prompt_ids) for n in ns])
            k0 = pre.layers[0].keys  # [b, H, P, D]
            slots.start(len(pre.layers), k0.shape[1], k0.shape[3], k0.dtype, logits.shape[1], logits.dtype,
                        columns=width + room, end=width, device=dev)
            P = k0.shape[2]
            for i, n in enumerate(ns):
                c = len(contexts[n])
                keys = [layer.keys[i, :, P - c:] for layer in pre.layers]  # [H, c, D] each
                values = [layer.values[i, :, P - c:] for layer in pre.layers]
                for m in same[key[n]]:
                    slots.put(free[m], keys, values, offsets[i], logits[i])
            del pre  # this chunk's own KV cache, now copied into the slots
        for n, k in enumerate(reused):
            if k is not None:
                k0 = k.keys[0]  # [H, c, D]
                slots.start(len(k.keys), k0.shape[0], k0.shape[2], k0.dtype, k.logits.shape[0], k.logits.dtype,
                            columns=width + room, end=width, device=dev)
                slots.put(free[n], k.keys, k.values, k.offset, k.logits)
        for n, (r, c) in enumerate(zip(idx, contexts)):
            req, j = requests[r], free[n]
            slots.pos[j] = len(c)
            slots.rows[j] = _Row(r, min(params.max_new_tokens, req.max_new_tokens or params.max_new_tokens), c)
        if slots.detector:
            slots.detector.reset_rows(free[:len(idx)], [requests[r].prefix_ids for r in idx])

    def _sample(self, slots: _Slots, params: SamplingParams, gen: torch.Generator):
        """One token for every live slot, appended to its row: (tokens [S] (pad where empty),
        live [S] bool, how many were sampled)."""
        live = torch.tensor([r is not None for r in slots.rows])  # [S]
        live_idx = live.nonzero().squeeze(1)  # [B]
        tok, lp = sample_token(slots.logits[live_idx], params.temperature, params.top_p, gen)  # [B], [B]
        tok_all = torch.full((len(slots.rows),), self.pad_id, dtype=torch.long)  # [S]
        tok_all[live_idx] = tok
        for j, t, l in zip(live_idx.tolist(), tok.tolist(), lp.tolist()):
            slots.rows[j].tokens.append(t)
            slots.rows[j].logprobs.append(l)
        return tok_all, live, len(live_idx)

    def _finish(self, slots: _Slots, tok_all: torch.Tensor, live: torch.Tensor, requests: list[GenerationRequest],
                out: list[Segment | None], params: SamplingParams, spent_all: bool) -> bool:
        """End the rows whose last token stops them, in order of precedence: a stop token or
        stop string, a repeat, the budget (or a spent call budget). Their segments go to
        `out`; their slots are freed (`live` updated in place), except a cut one with keep_kv,
        which stays for the next step to encode its last token. Returns whether any slot was
        freed. `tok_all` [S]: the tokens `_sample` just appended (pad where empty)."""
        repeated = slots.detector.step(tok_all).tolist() if slots.detector else [False] * len(slots.rows)
        stop_ids = set(params.stop_token_ids)
        max_stop = max((len(s) for s in params.stop_strings), default=0)
        finished = False
        for j in live.nonzero().squeeze(1).tolist():
            row = slots.rows[j]
            reason = None
            if row.tokens[-1] in stop_ids or (max_stop and self._hit_stop_string(row.tokens, params.stop_strings,
                                                                                    max_stop)):
                reason = "stop"
            elif repeated[j] and requests[row.index].repeat_check:
                reason = "repeat"
            elif len(row.tokens) >= row.budget or spent_all:
                reason = "length"
            if reason:
                out[row.index] = Segment(row.tokens, row.logprobs, reason)  # type: ignore[arg-type]
                if reason == "length" and requests[row.index].keep_kv:
                    row.keep = True  # stays in the next step, which encodes its last token
                else:
                    slots.rows[j], live[j], finished = None, False, True
                    slots.kv.clear(j)
        return finished

    def _decode(self, slots: _Slots, tok_all: torch.Tensor, live: torch.Tensor) -> None:
        """One decoding step of every slot (empty ones are ignored): each live slot's last
        token goes into its KV cache, and its next-token logits replace `slots.logits`. With
        attention groups, each group of slots attends over its own window."""
        dev = model_device(self.model)
        kv = slots.kv
        mask = kv.step_mask(live)  # [S, L+1]
        with grouped_attention(self.model, kv.groups(live, self.attention_groups), kv.start):
            slots.logits = self.model(
                input_ids=tok_all[:, None].to(dev), attention_mask=mask.to(dev),
                position_ids=(slots.pos + slots.offset)[:, None].to(dev),  # [S, 1] (M-RoPE models repeat it per row)
                use_cache=True, **{self._cache_kw: kv.cache},
            ).logits[:, -1, :].cpu()  # [S, V]
        kv.advance()
        slots.pos = slots.pos + live.long()

    @staticmethod
    def _take_kept(kept: dict[str, _KeptKV], rid: str, context: list[int]) -> _KeptKV | None:
        """The KV kept for request `rid` if it covers exactly `context` (removed from `kept`)."""
        k = kept.get(rid) if rid else None
        return kept.pop(rid) if k is not None and k.context == context else None

    def _prefill(self, contexts: list[list[int]], images: Sequence[Sequence[bytes]] = (),
                 prompt_lens: Sequence[int] = ()):
        """Run the contexts (left-padded) through the model, with their images when there are
        any (`images[i]`: the images of context i's first prompt_lens[i] tokens, in
        placeholder order). Returns (its DynamicCache, next-token logits [b, V], rotary
        offsets [b] of the tokens that follow: `rope_positions`)."""
        from transformers import DynamicCache

        b, P = len(contexts), max(len(c) for c in contexts)
        input_ids = torch.full((b, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, P), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every row's next token is at P
            input_ids[i, P - len(c):] = torch.tensor(c)
            attn[i, P - len(c):] = 1
        cache = DynamicCache()
        dev = model_device(self.model)
        pngs = [png for row in images for png in row]
        tokens = {"input_ids": input_ids.to(dev)}  # [b, P]
        mask = grids = None
        if pngs:  # [b, P, H]: the prompts' image tokens replaced by their features
            spans = [(P - len(c), P - len(c) + n) for c, n in zip(contexts, prompt_lens)]
            mask = prompt_image_mask(input_ids, spans, image_token_id(self.model))  # [b, P]
            features = self._image_features(pngs)
            tokens = {"inputs_embeds": embed_with_images(self.model, tokens["input_ids"], features, mask.to(dev))}
            if self._grids:
                grids = torch.stack([self._grids[image_key(p)] for p in pngs])  # [I, 3]
        pos, offsets = rope_positions(self.model, input_ids, attn, mask, grids)  # [b, P] or [3, b, P], [b]
        logits = self.model(
            **tokens, attention_mask=attn.to(dev), position_ids=pos.to(dev), use_cache=True,
            logits_to_keep=1, **{self._cache_kw: cache},
        ).logits[:, -1, :].cpu()  # [b, V]
        self._check_layers(cache)
        return cache, logits, offsets.cpu()

    def _image_features(self, pngs: Sequence[bytes]) -> list[torch.Tensor]:
        """Each image's [tokens, hidden] features, from the cache or computed (new ones in one batch)."""
        new = {image_key(p): p for p in pngs if image_key(p) not in self._features}
        if new:
            inputs = self.tokenizer.image_inputs(list(new.values()))
            self._features.update(zip(new, image_features(self.model, inputs.to(model_device(self.model)))))
            if inputs.grid_thw is not None:
                self._grids.update(zip(new, inputs.grid_thw))
        return [self._features[image_key(p)] for p in pngs]

    @staticmethod
    def _check_layers(cache) -> None:
        from transformers.cache_utils import DynamicLayer

        for layer in cache.layers:
            if not isinstance(layer, DynamicLayer) or layer.is_sliding:
                raise UserError(
                    f"the built-in rollout engine needs full-attention KV-cache layers; this model uses "
                    f"{type(layer).__name__} (sliding-window attention is not supported)"
                )

    def _hit_stop_string(self, toks: list[int], stops: list[str], max_stop: int) -> bool:
        return hit_stop_string(self.tokenizer, toks, stops, max_stop)

    def sleep(self) -> None:
        """Nothing to free (distributed.colocate): the engine runs on CPU and its KV
        cache lives only during `generate`."""

    def wake_up(self) -> None:
        """Undo `sleep` (a no-op here)."""


def prefill_chunks(lengths: Sequence[int], max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) ranges of contexts with these lengths, each prefilled at once:
    as many as fit in `max_tokens` padded tokens (rows x the longest), at least one.

    >>> prefill_chunks([10, 10, 30, 5], 40)
    [(0, 2), (2, 3), (3, 4)]
    >>> prefill_chunks([100], 40)
    [(0, 1)]
    """
    chunks, lo, widest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > lo and (i - lo + 1) * max(widest, n) > max_tokens:
            chunks.append((lo, i))
            lo, widest = i, 0
        widest = max(widest, n)
    if lengths:
        chunks.append((lo, len(lengths)))
    return chunks


def hit_stop_string(tokenizer, toks: Sequence[int], stops: Sequence[str], max_stop: int) -> bool:
    """Whether the decoded tail of `toks` (the last max_stop + 4 tokens) holds any stop
    string: checked after every sampled token, by HFEngine and by the vLLM engine."""
    tail = tokenizer.decode(list(toks[-(max_stop + 4):]), skip_special_tokens=False)
    return any(s in tail for s in stops)
