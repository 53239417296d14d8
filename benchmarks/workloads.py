"""Workloads shared by the rollout benchmarks.

Two kinds of response-length distribution:
- natural: the warm-up model answering sort questions of all six levels (lengths 30 to
  200 tokens, set by the model itself);
- heavy-tailed: every trajectory gets a target length drawn from a Pareto distribution
  and ends exactly there ("forced EOS"), whatever the model samples. This isolates the
  scheduling question (who waits for whom) from what the model happens to say.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from typing import Mapping, Sequence

import torch

from k15rl.rollout.engine import RolloutEngine, SamplingParams
from k15rl.types import GenerationRequest, Segment


def pareto_length(key: str, seed: int, alpha: float = 1.2, low: int = 16, high: int = 896) -> int:
    """A heavy-tailed length in [low, high], a deterministic function of (key, seed).
    (high + the longest prompt stays within the built-in model's 1024 positions.)

    >>> pareto_length("g0m0", 0) == pareto_length("g0m0", 0)
    True
    """
    h = int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "big")
    u = (h + 0.5) / 2**64  # uniform in (0, 1)
    return int(min(high, low * u ** (-1 / alpha)))


class ForcedLengthEngine:
    """Wraps an engine so that the trajectory named by each request's id ends after
    exactly `target(id)` tokens (its last segment reports "stop"). EOS and stop strings
    are ignored; everything else (sampling, KV cache, batching) is the wrapped engine's.
    """

    def __init__(self, inner: RolloutEngine, target):
        self.inner = inner
        self.target = target

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Segment]:
        capped = []
        for r in requests:
            room = self.target(r.id) - len(r.prefix_ids)
            capped.append(replace(r, max_new_tokens=min(room, r.max_new_tokens or params.max_new_tokens)))
        segs = self.inner.generate(capped, replace(params, stop_token_ids=[], stop_strings=[], repeat_ngram=0))
        for r, s in zip(requests, segs):
            if len(r.prefix_ids) + len(s.token_ids) >= self.target(r.id):
                s.finish_reason = "stop"
        return segs

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.inner.load_weights(state_dict)


def visual_prompts(n: int, seed: int = 0):
    """n prompts of the four visual tasks (one image each), levels 1-5 in equal shares, shuffled."""
    from k15rl.tasks import get_task, make_prompts

    per = -(-n // 20)
    prompts = [p for name in ("vis_count", "vis_bars", "vis_text", "vis_sort")
               for p in make_prompts(get_task(name), "train", per, (1, 2, 3, 4, 5), seed)]
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def sort_prompts(n: int, seed: int = 0):
    """n sort questions, levels 1-6 in equal shares, shuffled."""
    from k15rl.tasks import get_task, make_prompts

    per_level = -(-n // 6)
    prompts = make_prompts(get_task("sort"), "train", per_level, (1, 2, 3, 4, 5, 6), seed)
    random.Random(seed).shuffle(prompts)
    return prompts[:n]
