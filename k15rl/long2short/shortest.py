"""Shortest rejection sampling (report §2.4): sample each question n times (n = 8 in the
report), keep the shortest correct response, and fine-tune on those.

`sample_groups` draws and scores the n samples (shared with DPO pair building, which
needs the same samples); `shortest_correct` and `shortest_rs_rows` are plain functions
on the results.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from k15rl.data.readers import bad_text
from k15rl.data.rows import images_field
from k15rl.rollout.collect import rollout
from k15rl.rollout.engine import RolloutEngine, SamplingParams
from k15rl.types import Prompt, Trajectory


@dataclass(frozen=True)
class Sample:
    """One scored response: its text, its length in tokens (EOS included, as everywhere
    in the project) and the verifier's verdict."""

    text: str
    num_tokens: int
    correct: bool

    @classmethod
    def from_trajectory(cls, t: Trajectory) -> "Sample":
        return cls(t.text, t.num_tokens, bool(t.correct))


@dataclass
class SampledGroup:
    """The n samples of one question, in sampling order."""

    prompt: Prompt
    samples: list[Sample]


def shortest_correct(samples: Sequence[Sample]) -> int | None:
    """Index of the shortest correct sample; among equally short ones the first sampled;
    None when no sample is correct.

    >>> shortest_correct([Sample("a", 9, True), Sample("b", 5, False), Sample("c", 7, True), Sample("d", 7, True)])
    2
    >>> shortest_correct([Sample("a", 9, False)]) is None
    True
    """
    best = None
    for i, s in enumerate(samples):
        if s.correct and (best is None or s.num_tokens < samples[best].num_tokens):
            best = i
    return best


def writable(samples: Sequence[Sample]) -> list[Sample]:
    """The samples a training row can hold. A small model can sample a byte token that
    decodes to a control character (U+0000 seen from `builtin-long`); the SFT and DPO
    readers refuse such text (`bad_text`), so a row holding it would stop the next stage.
    Those samples are left out of the rows, and counted in the stats.

    >>> [s.text for s in writable([Sample("a", 1, True), Sample("b\\x00", 2, False)])]
    ['a']
    """
    return [s for s in samples if bad_text(s.text) is None]


def prompt_field(prompt: Prompt) -> str | list[dict]:
    """A prompt as the SFT/DPO JSONL files hold it: the question alone when it is the
    only message, else the chat as a list of {"role", "content"} messages."""
    if len(prompt.messages) == 1 and prompt.messages[0][0] == "user":
        return prompt.messages[0][1]
    return [{"role": r, "content": c} for r, c in prompt.messages]


@dataclass
class ShortestStats:
    questions: int = 0
    kept: int = 0  # questions with at least one correct sample
    without_correct: int = 0  # questions none of whose samples is correct (left out)
    unwritable: int = 0  # samples left out: text a row cannot hold (`writable`)
    mean_tokens_all: float = 0.0  # over every sample
    mean_tokens_correct: float = 0.0  # over every correct sample
    mean_tokens_kept: float = 0.0  # over the kept (shortest correct) responses

    def line(self) -> str:
        return (f"{self.questions} questions: {self.kept} kept, {self.without_correct} without a correct sample "
                f"(left out); mean tokens: all samples {self.mean_tokens_all:.1f}, correct samples "
                f"{self.mean_tokens_correct:.1f}, kept {self.mean_tokens_kept:.1f}"
                + (f"; {self.unwritable} samples left out (a control character or lone surrogate "
                   f"in their text)" if self.unwritable else ""))


def shortest_rs_rows(groups: Sequence[SampledGroup]) -> tuple[list[dict], ShortestStats]:
    """SFT rows ({"prompt", "response", ...}, the `k15rl sft` format): the shortest correct
    response of each question. Questions without a correct sample are counted, not kept."""
    rows = []
    st = ShortestStats(questions=len(groups))
    all_tokens = [s.num_tokens for g in groups for s in g.samples]
    correct_tokens = [s.num_tokens for g in groups for s in g.samples if s.correct]
    for g in groups:
        samples = writable(g.samples)
        st.unwritable += len(g.samples) - len(samples)
        i = shortest_correct(samples)
        if i is None:
            st.without_correct += 1
            continue
        s = samples[i]
        rows.append({"prompt": prompt_field(g.prompt), "response": s.text, "answer": g.prompt.answer,
                     "task": g.prompt.task, "level": g.prompt.level, "tokens": s.num_tokens,
                     "correct_samples": sum(x.correct for x in g.samples), "samples": len(g.samples),
                     **images_field(g.prompt)})
    st.kept = len(rows)
    st.mean_tokens_all = sum(all_tokens) / max(len(all_tokens), 1)
    st.mean_tokens_correct = sum(correct_tokens) / max(len(correct_tokens), 1)
    st.mean_tokens_kept = sum(r["tokens"] for r in rows) / max(len(rows), 1)
    return rows, st


def sample_groups(
    engine: RolloutEngine,
    tokenizer,
    prompts: Sequence[Prompt],
    n: int,
    params: SamplingParams,
    rewards=None,
    prompts_per_call: int = 64,
    desc: str = "sampling",
) -> list[SampledGroup]:
    """n scored samples per prompt (the verifier of each prompt's task, or `rewards`, a
    RewardRouter). Prompts go to the engine `prompts_per_call` at a time, with a
    progress bar."""
    from tqdm import tqdm

    from k15rl.rewards import score

    groups: list[SampledGroup] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True)
    for start in range(0, len(prompts), prompts_per_call):
        chunk = prompts[start : start + prompts_per_call]
        # a different seed per call, so chunks do not share their random draws
        trajs = rollout(engine, tokenizer, chunk, n, replace(params, seed=params.seed + start), first_group=start)
        score(trajs, rewards=rewards)
        for i, p in enumerate(chunk):
            groups.append(SampledGroup(p, [Sample.from_trajectory(t) for t in trajs[i * n : (i + 1) * n]]))
        bar.update(len(chunk))
    bar.close()
    return groups
