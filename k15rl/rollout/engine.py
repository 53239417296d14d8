"""Rollout engines: sample responses and record each token's log-probability (report §2.6).

The loop sees engines only through the `RolloutEngine` protocol: a list of plain
`GenerationRequest`s in, a list of `Segment`s out, and `load_weights(state_dict)` to
receive the trainer's new weights each iteration. An engine can therefore live in the
trainer's process, in another process or on a Ray actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import inspect

import torch

from k15rl.types import GenerationRequest, Segment


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    seed: int = 0


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


class HFEngine:
    """Batched sampling with a KV cache on any Hugging Face causal LM.

    Requests are processed in chunks of `max_batch` rows, longest contexts together.
    Rows that finish are dropped from the batch and its KV cache at once, so finished
    sequences cost no compute while others continue.
    """

    def __init__(self, model, tokenizer, max_batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.pad_id = tokenizer.pad_token_id
        # transformers >= 5.x names the KV-cache argument `cache`; older ones `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Segment]:
        gen = torch.Generator().manual_seed(params.seed)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt_ids) - len(requests[i].prefix_ids))
        out: list[Segment | None] = [None] * len(requests)
        for s in range(0, len(order), self.max_batch):
            idx = order[s : s + self.max_batch]
            for i, seg in zip(idx, self._generate_chunk([requests[i] for i in idx], params, gen)):
                out[i] = seg
        return out  # type: ignore[return-value]

    def _generate_chunk(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, gen: torch.Generator
    ) -> list[Segment]:
        from transformers import DynamicCache

        contexts = [list(r.prompt_ids) + list(r.prefix_ids) for r in requests]
        B, P = len(contexts), max(len(c) for c in contexts)
        input_ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every row's next token is at P
            input_ids[i, P - len(c) :] = torch.tensor(c)
            attn[i, P - len(c) :] = 1
        pos = (attn.cumsum(1) - 1).clamp(min=0)  # [B, P]
        stop_ids = torch.tensor(params.stop_token_ids or [-1])
        max_stop = max((len(s) for s in params.stop_strings), default=0)

        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        reasons: list[str] = ["length"] * B
        alive = torch.arange(B)  # original row of each live batch row
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        next_pos = pos[:, -1] + 1  # [B]
        for step in range(params.max_new_tokens):
            tok, lp = sample_token(out.logits[:, -1, :], params.temperature, params.top_p, gen)  # [b], [b]
            done = torch.isin(tok, stop_ids)  # [b]
            for j, row in enumerate(alive.tolist()):
                tokens[row].append(int(tok[j]))
                logps[row].append(float(lp[j]))
                if done[j]:
                    reasons[row] = "stop"
                elif max_stop and self._hit_stop_string(tokens[row], params.stop_strings, max_stop):
                    reasons[row], done[j] = "stop", True
            if step == params.max_new_tokens - 1:
                break
            keep = (~done).nonzero().squeeze(1)  # [b']
            if keep.numel() == 0:
                break
            if keep.numel() < alive.numel():  # drop finished rows from the batch and cache
                cache.batch_select_indices(keep)
                alive, tok, attn, next_pos = alive[keep], tok[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype)], 1)  # [b, P+t+1]
            out = self.model(
                input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None], use_cache=True,
                **{self._cache_kw: cache},
            )
            next_pos = next_pos + 1
        return [Segment(t, l, r) for t, l, r in zip(tokens, logps, reasons)]  # type: ignore[arg-type]

    def _hit_stop_string(self, toks: list[int], stops: list[str], max_stop: int) -> bool:
        tail = self.tokenizer.decode(toks[-(max_stop + 4) :], skip_special_tokens=False)
        return any(s in tail for s in stops)
