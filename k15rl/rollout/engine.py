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

import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F

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
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Segment]: ...

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None: ...


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
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)  # [B, V]
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
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

    def add_rows(self, prefixes: Sequence[Sequence[int]]) -> None:
        """Append rows whose responses so far are `prefixes` (continued segments keep their
        repeat state: a loop that straddles a cut is still caught)."""
        n = self.n
        hist = torch.full((len(prefixes), n), -1, dtype=torch.long)
        runs = torch.zeros((len(prefixes), n), dtype=torch.long)
        for i, prefix in enumerate(prefixes):
            h, r = [-1] * n, [0] * n
            for t in prefix:  # the same recurrence as `step`, in plain Python, once per row
                r = [(r[p] + 1) if h[n - 1 - p] == t else 0 for p in range(n)]
                h = h[1:] + [t]
            hist[i], runs[i] = torch.tensor(h), torch.tensor(r)
        self.hist = torch.cat([self.hist, hist])
        self.runs = torch.cat([self.runs, runs])

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row (tok [B]); returns which rows now repeat ([B] bool)."""
        same = self.hist.flip(1) == tok[:, None]  # [B, n] column p-1: token p positions back
        self.runs = (self.runs + 1) * same
        self.hist = torch.cat([self.hist[:, 1:], tok[:, None]], 1)
        return (self.runs + self.periods >= self.need).any(1)

    def select(self, keep: torch.Tensor) -> None:
        self.hist, self.runs = self.hist[keep], self.runs[keep]


@dataclass
class _Row:
    """Book-keeping for one request while it holds a slot."""

    index: int  # position in the caller's request list
    budget: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class HFEngine:
    """Continuous batching with a KV cache on any Hugging Face causal LM.

    Up to `max_batch` sequences decode together (left-padded, explicit position ids).
    After each step, finished rows leave the batch and its KV cache, and waiting
    requests are prefilled together and merged in. Cache columns that have become
    padding in every row are trimmed, so a long-finished sequence leaves no cost behind.
    Works with caches made of full-attention `DynamicLayer`s (Llama, Qwen2, Mistral
    without sliding window, SmolLM, ...).
    """

    def __init__(self, model, tokenizer, max_batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # transformers >= 5.x names the KV-cache argument `cache`; older ones `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Segment]:
        """One Segment per request, in the order given. Requests are admitted in that order."""
        gen = torch.Generator().manual_seed(params.seed)
        stop_ids = torch.tensor(params.stop_token_ids or [-1])
        max_stop = max((len(s) for s in params.stop_strings), default=0)
        waiting = deque(range(len(requests)))
        out: list[Segment | None] = [None] * len(requests)
        rows: list[_Row] = []
        cache = attn = next_pos = logits = None  # state of the running batch
        detector = RepeatDetector(params.repeat_ngram, params.repeat_times, params.repeat_min_tokens) \
            if params.repeat_ngram > 0 else None
        while waiting or rows:
            # 1. admit waiting requests into free slots: prefill them together, merge them in
            free = self.max_batch - len(rows)
            if waiting and free > 0:
                idx = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                new = [requests[i] for i in idx]
                c2, a2, p2, l2 = self._prefill([list(r.prompt_ids) + list(r.prefix_ids) for r in new])
                if rows:
                    cache, attn = self._merge(cache, attn, c2, a2)
                    next_pos, logits = torch.cat([next_pos, p2]), torch.cat([logits, l2])
                else:
                    cache, attn, next_pos, logits = c2, a2, p2, l2
                rows += [_Row(i, min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens))
                         for i, r in zip(idx, new)]
                if detector:
                    detector.add_rows([r.prefix_ids for r in new])
            # 2. sample one token for every running row
            tok, lp = sample_token(logits, params.temperature, params.top_p, gen)  # [B], [B]
            stopped = torch.isin(tok, stop_ids)  # [B]
            repeated = detector.step(tok) if detector else torch.zeros_like(stopped)  # [B]
            done = []
            for row, t, l, st, rep in zip(rows, tok.tolist(), lp.tolist(), stopped.tolist(), repeated.tolist()):
                row.tokens.append(t)
                row.logprobs.append(l)
                reason = None
                if st or (max_stop and self._hit_stop_string(row.tokens, params.stop_strings, max_stop)):
                    reason = "stop"
                elif rep:
                    reason = "repeat"
                elif len(row.tokens) >= row.budget:
                    reason = "length"
                done.append(reason is not None)
                if reason:
                    out[row.index] = Segment(row.tokens, row.logprobs, reason)  # type: ignore[arg-type]
            # 3. finished rows leave the batch and the cache
            if any(done):
                keep = torch.tensor([j for j, d in enumerate(done) if not d], dtype=torch.long)  # [b']
                rows = [rows[j] for j in keep.tolist()]
                if not rows:
                    cache = None
                    continue
                cache.batch_select_indices(keep)
                attn, next_pos, tok = attn[keep], next_pos[keep], tok[keep]
                if detector:
                    detector.select(keep)
                attn = self._trim(cache, attn)
            # 4. one decoding step for the rows still running
            attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype)], 1)  # [B, L+1]
            logits = self.model(
                input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None], use_cache=True,
                **{self._cache_kw: cache},
            ).logits[:, -1, :]  # [B, V]
            next_pos = next_pos + 1
        return out  # type: ignore[return-value]

    def _prefill(self, contexts: list[list[int]]):
        """Run the contexts (left-padded) through the model. Returns (cache, attention mask
        [b, P], next position [b], next-token logits [b, V])."""
        from transformers import DynamicCache

        b, P = len(contexts), max(len(c) for c in contexts)
        input_ids = torch.full((b, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, P), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every row's next token is at P
            input_ids[i, P - len(c):] = torch.tensor(c)
            attn[i, P - len(c):] = 1
        pos = (attn.cumsum(1) - 1).clamp(min=0)  # [b, P]
        cache = DynamicCache()
        logits = self.model(
            input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
            **{self._cache_kw: cache},
        ).logits[:, -1, :]  # [b, V]
        return cache, attn, pos[:, -1] + 1, logits

    @staticmethod
    def _layers(cache) -> list:
        from transformers.cache_utils import DynamicLayer

        layers = cache.layers
        for layer in layers:
            if not isinstance(layer, DynamicLayer) or layer.is_sliding:
                raise NotImplementedError(
                    f"continuous batching needs full-attention KV-cache layers, this model uses "
                    f"{type(layer).__name__}; set rollout.max_batch >= the number of sequences per iteration"
                )
        return layers

    def _merge(self, cache, attn: torch.Tensor, new_cache, new_attn: torch.Tensor):
        """Stack two running batches: the shorter one is left-padded (zeros, masked out)."""
        La, Lb = attn.shape[1], new_attn.shape[1]
        L = max(La, Lb)
        for layer, new in zip(self._layers(cache), self._layers(new_cache)):
            layer.keys = torch.cat([F.pad(layer.keys, (0, 0, L - La, 0)), F.pad(new.keys, (0, 0, L - Lb, 0))])
            layer.values = torch.cat([F.pad(layer.values, (0, 0, L - La, 0)), F.pad(new.values, (0, 0, L - Lb, 0))])
        attn = torch.cat([F.pad(attn, (L - La, 0)), F.pad(new_attn, (L - Lb, 0))])  # [B, L]
        return cache, attn

    def _trim(self, cache, attn: torch.Tensor) -> torch.Tensor:
        """Drop leading cache columns that are padding in every row."""
        start = int(attn.any(0).nonzero()[0])
        if start > 0:
            for layer in self._layers(cache):
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            attn = attn[:, start:]
        return attn

    def _hit_stop_string(self, toks: list[int], stops: list[str], max_stop: int) -> bool:
        tail = self.tokenizer.decode(toks[-(max_stop + 4):], skip_special_tokens=False)
        return any(s in tail for s in stops)
