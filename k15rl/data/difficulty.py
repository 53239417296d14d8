"""Difficulty estimation (report §2.3.4): a model answers each prompt several times at
a relatively high temperature; the share of correct answers (the pass rate) is the
prompt's difficulty proxy, lower = harder. Prompts it always solves (pass rate 1)
carry no learning signal for RL and may be dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from k15rl.types import Prompt


@dataclass
class SampleSettings:
    """How the model is asked: `samples` answers per prompt, `prompts_per_batch`
    prompts per call to the engine (a progress-bar step); `stop_strings` end an answer as
    in training (rollout.stop_strings)."""

    samples: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    prompts_per_batch: int = 32
    seed: int = 0
    stop_strings: tuple[str, ...] = ()


def correct_counts(engine, tokenizer, prompts: Sequence[Prompt], settings: SampleSettings,
                   stop_token_ids: Sequence[int] = (), desc: str = "sampling", rewards=None) -> list[int]:
    """How many of `settings.samples` sampled answers to each prompt are right: by its
    verifier, or by `rewards` (a RewardRouter: the training run's reward.* settings)."""
    from tqdm import tqdm

    from k15rl.rewards import score
    from k15rl.rollout.collect import rollout
    from k15rl.rollout.engine import SamplingParams

    counts: list[int] = []
    step = max(1, settings.prompts_per_batch)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True)
    for start in range(0, len(prompts), step):
        chunk = list(prompts[start : start + step])
        params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, stop_token_ids=list(stop_token_ids),
                                stop_strings=list(settings.stop_strings), seed=settings.seed * 1_000_003 + start)
        trajs = rollout(engine, tokenizer, chunk, settings.samples, params)
        score(trajs, rewards=rewards)
        per_prompt = Counter(t.group for t in trajs if t.correct)
        counts += [per_prompt.get(i, 0) for i in range(len(chunk))]
        bar.update(len(chunk))
    bar.close()
    return counts


def pass_rates(engine, tokenizer, prompts: Sequence[Prompt], settings: SampleSettings,
               stop_token_ids: Sequence[int] = (), rewards=None) -> list[float]:
    """Pass rate of each prompt: correct answers / `settings.samples` (report §2.3.4);
    `rewards` as in `correct_counts`."""
    counts = correct_counts(engine, tokenizer, prompts, settings, stop_token_ids, desc="difficulty", rewards=rewards)
    return [c / settings.samples for c in counts]


def histogram(rates: Sequence[float], bins: int = 5) -> list[tuple[str, int]]:
    """Counts of pass rates in `bins` equal bins of [0, 1], with 0 and 1 on their own.

    >>> histogram([0.0, 0.1, 0.5, 1.0, 1.0], bins=2)
    [('0', 1), ('(0, 0.5)', 1), ('[0.5, 1)', 1), ('1', 2)]
    """
    out = [("0", sum(r == 0 for r in rates))]
    edges = [i / bins for i in range(bins + 1)]
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        label = f"{'(' if i == 0 else '['}{lo:g}, {hi:g})"
        out.append((label, sum(lo <= r < hi and r != 0 for r in rates)))
    out.append(("1", sum(r == 1 for r in rates)))
    return out
