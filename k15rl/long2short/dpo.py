"""DPO for long2short (report §2.4): preference pairs that favour the shortest correct
response, and a training loop around the DPO loss (`k15rl.algorithms.dpo_loss`).

Pairs (report §2.4): for the n samples of one question, chosen = the shortest correct
response; rejected = every wrong response longer than it, and every correct response at
least `ratio` (1.5 in the report) times its length.

Loss (Rafailov et al. 2023), with S = the sequence log-probability of a response (sum of
its token log-probs) under the policy and S_ref under the reference model:

    loss = -mean_pairs log sigmoid( beta * ((S_c - S_ref_c) - (S_r - S_ref_r)) )

The reference is the model DPO starts from; its log-probs are computed once, before the
first step, and cached in a file keyed by the model's files and the pairs. Optionally
(`DPOConfig.sft_weight`) the chosen responses' per-token NLL is added (RPO).

Shapes: P pairs; N = 2P sequences in a batch (chosen rows, then rejected rows); T response length.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from k15rl.algorithms import dpo_loss
from k15rl.data.readers import read_jsonl_objects
from k15rl.data.rows import images_field, with_row_images
from k15rl.errors import UserError
from k15rl.long2short.shortest import Sample, SampledGroup, prompt_field, shortest_correct, writable
from k15rl.models.vision import image_key


@dataclass(frozen=True)
class Pair:
    """Indices into one question's samples, and why the rejected one is rejected:
    'wrong_longer' or 'correct_too_long'."""

    chosen: int
    rejected: int
    reason: str


def dpo_pairs(samples: Sequence[Sample], ratio: float = 1.5) -> list[Pair]:
    """Preference pairs of one question's samples (report §2.4).

    chosen = the shortest correct sample (the first sampled among equally short ones);
    rejected = each wrong sample strictly longer than it, and each correct sample of at
    least `ratio` times its length. No correct sample: no pairs.

    >>> s = [Sample("w", 12, False), Sample("c", 10, True), Sample("c2", 15, True), Sample("w2", 8, False)]
    >>> dpo_pairs(s)
    [Pair(chosen=1, rejected=0, reason='wrong_longer'), Pair(chosen=1, rejected=2, reason='correct_too_long')]
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (got {ratio})")
    best = shortest_correct(samples)
    if best is None:
        return []
    n0 = samples[best].num_tokens
    pairs = []
    for i, s in enumerate(samples):
        if i == best:
            continue
        if not s.correct and s.num_tokens > n0:
            pairs.append(Pair(best, i, "wrong_longer"))
        elif s.correct and s.num_tokens >= ratio * n0:
            pairs.append(Pair(best, i, "correct_too_long"))
    return pairs


@dataclass
class PairStats:
    questions: int = 0
    without_correct: int = 0
    without_pairs: int = 0  # questions with a correct sample but nothing to reject
    pairs: int = 0
    wrong_longer: int = 0
    correct_too_long: int = 0
    unwritable: int = 0  # samples left out: text a row cannot hold (`shortest.writable`)

    def line(self) -> str:
        return (f"{self.questions} questions -> {self.pairs} pairs ({self.wrong_longer} wrong and longer, "
                f"{self.correct_too_long} correct but too long); {self.without_correct} questions without a "
                f"correct sample, {self.without_pairs} with nothing to reject"
                + (f"; {self.unwritable} samples left out (a control character or lone surrogate "
                   f"in their text)" if self.unwritable else ""))


def dpo_pair_rows(groups: Sequence[SampledGroup], ratio: float = 1.5) -> tuple[list[dict], PairStats]:
    """JSONL rows {"prompt", "chosen", "rejected", ...} (the `k15rl dpo` format)."""
    rows, st = [], PairStats(questions=len(groups))
    for g in groups:
        samples = writable(g.samples)
        st.unwritable += len(g.samples) - len(samples)
        if shortest_correct(samples) is None:
            st.without_correct += 1
            continue
        pairs = dpo_pairs(samples, ratio)
        if not pairs:
            st.without_pairs += 1
        for p in pairs:
            c, r = samples[p.chosen], samples[p.rejected]
            rows.append({"prompt": prompt_field(g.prompt), "chosen": c.text, "rejected": r.text, "reason": p.reason,
                         "chosen_tokens": c.num_tokens, "rejected_tokens": r.num_tokens, "task": g.prompt.task,
                         "level": g.prompt.level, **images_field(g.prompt)})
            st.pairs += 1
            st.wrong_longer += p.reason == "wrong_longer"
            st.correct_too_long += p.reason == "correct_too_long"
    return rows, st


@dataclass
class PairExample:
    """One preference pair as loaded from JSONL."""

    messages: list[dict]
    chosen: str
    rejected: str


def load_pairs_jsonl(path: str | Path) -> list[PairExample]:
    """Pairs from a JSONL of {"prompt", "chosen", "rejected"} objects (`prompt`: a string
    or a list of chat messages; `images`, optional: the prompt's images, as in data files).
    A bad line raises UserError naming file, line and field
    (read by `k15rl.data.readers.read_jsonl_objects`)."""
    path = Path(path)
    out = []
    for lineno, row in read_jsonl_objects(path, ("prompt", "chosen", "rejected")):
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str):
                raise UserError(f"{path}:{lineno}: field {key!r} must be a string (got {row[key]!r:.40})")
            if not row[key].strip():
                raise UserError(f"{path}:{lineno}: field {key!r} is empty")
        if row["chosen"] == row["rejected"]:
            raise UserError(f"{path}:{lineno}: fields 'chosen' and 'rejected' are the same text: the pair "
                            "prefers nothing (DPO's gradient on it is zero)")
        prompt = row["prompt"]
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            messages = prompt
        else:
            raise UserError(f"{path}:{lineno}: field 'prompt' must be a string or a list of chat messages")
        out.append(PairExample(with_row_images(messages, row, path, lineno), row["chosen"], row["rejected"]))
    if not out:
        raise UserError(f"data file {path} holds no pairs")
    return out


@dataclass
class DPOConfig:
    beta: float = 0.1
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 8  # pairs per optimizer step
    warmup_frac: float = 0.1  # linear warm-up of the learning rate, then constant
    max_length: int = 1024  # prompt + the longer response, in tokens; longer pairs are left out (encode_pairs)
    grad_clip: float = 1.0
    # weight of the chosen responses' per-token negative log-likelihood added to the DPO loss
    # (0: plain DPO). Plain DPO can lower the chosen log-probs along with the rejected ones;
    # this term (Pang et al. 2024, "RPO") keeps the chosen answers likely.
    sft_weight: float = 0.0
    autocast_bf16: bool = False
    seed: int = 0


class Encoded(NamedTuple):
    """One pair as token ids; `images`: the prompt's (PNG bytes), for a vision-language model."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    images: tuple[bytes, ...] = ()


def encode_pairs(tokenizer, pairs: Sequence[PairExample], max_length: int,
                 log: Callable[[str], None] = print) -> list[Encoded]:
    """The pairs as token ids. A pair whose prompt with its chosen or its rejected response
    is over `max_length` tokens is left out, and their number logged: cutting both to the
    same room would cut off their ends (EOS included) and, for long2short's pairs, the very
    difference in length the preference is about."""
    from k15rl.models.loading import encode_prompt, encode_response

    out, longest = [], 0
    for ex in pairs:
        images = tuple(png for m in ex.messages for png in m.get("images", ()))
        p = encode_prompt(tokenizer, [(m["role"], m["content"]) for m in ex.messages], images)
        chosen, rejected = encode_response(tokenizer, ex.chosen), encode_response(tokenizer, ex.rejected)
        n = len(p) + max(len(chosen), len(rejected))
        if n > max_length:
            longest = max(longest, n)
            continue
        out.append(Encoded(p, chosen, rejected, images))
    if len(out) < len(pairs):
        log(f"dpo: {len(pairs) - len(out)} of {len(pairs)} pairs left out: over {max_length} tokens with their "
            f"longer response (the longest {longest}; --max-length)")
    return out


def sequence_logps(model, rows: Sequence[Encoded], pad_id: int, tokenizer=None) -> torch.Tensor:
    """Sequence log-probs [P, 2] (chosen, rejected) of a batch of encoded pairs (their
    images' pixel values from `tokenizer`, a `VisionTokenizer`, when they have any)."""
    from k15rl.models.loading import model_device
    from k15rl.trainer.logprobs import collate, token_logprobs

    prompts = [r.prompt for r in rows] * 2
    responses = [r.chosen for r in rows] + [r.rejected for r in rows]
    batch = collate(prompts, responses, pad_id).with_images([r.images for r in rows] * 2, tokenizer)
    batch = batch.to(model_device(model))  # on the model's device
    seq = token_logprobs(model, batch).sum(-1)  # [2P]
    P = len(rows)
    return torch.stack([seq[:P], seq[P:]], dim=1)  # [P, 2]


def reference_logps(model, rows: Sequence[Encoded], pad_id: int, batch_size: int = 16,
                    tokenizer=None) -> torch.Tensor:
    """Sequence log-probs [P, 2] of every pair under `model` (no gradient), with a progress bar."""
    from tqdm import tqdm

    out = []
    model.eval()
    with torch.no_grad():
        for s in tqdm(range(0, len(rows), batch_size), desc="reference log-probs", unit="batch", dynamic_ncols=True):
            out.append(sequence_logps(model, rows[s : s + batch_size], pad_id, tokenizer).cpu())  # [b, 2], cached on disk
    return torch.cat(out) if out else torch.zeros(0, 2)


def model_fingerprint(path: str | Path) -> str:
    """Identifies a model folder's weights cheaply: names, sizes and modification times of
    its weight and config files."""
    path = Path(path)
    parts = []
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def pairs_fingerprint(rows: Sequence[Encoded]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.prompt, row.chosen, row.rejected, [image_key(png) for png in row.images]]).encode())
    return h.hexdigest()[:16]


def cached_reference_logps(model, rows: Sequence[Encoded], pad_id: int, cache: Path | None, key: str,
                           log: Callable[[str], None] = print, tokenizer=None, bf16: bool = False) -> torch.Tensor:
    """Reference log-probs [P, 2], read from `cache` when it holds them for `key` (the
    reference model's and the pairs' fingerprints), else computed once and written there.
    `bf16`: under the bf16 autocast the policy trains with (DPOConfig.autocast_bf16), so the
    policy's log-probs equal the reference's at the first step; it is part of the key."""
    from k15rl.models.loading import model_device
    from k15rl.trainer.finetune import autocast

    key = f"{key}:{'bf16' if bf16 else 'fp32'}"
    if cache is not None and cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
        except Exception as e:  # torch raises several types for a file that is not its own
            raise UserError(f"{cache}: not a reference log-prob cache ({type(e).__name__}); remove it or choose "
                            "another --ref-cache") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("logps"), torch.Tensor):
            raise UserError(f"{cache}: not a reference log-prob cache; remove it or choose another --ref-cache")
        if saved.get("key") == key and saved["logps"].shape == (len(rows), 2):
            log(f"reference log-probs of {len(rows)} pairs read from {cache}")
            return saved["logps"]
    with autocast(bf16, model_device(model)):
        logps = reference_logps(model, rows, pad_id, tokenizer=tokenizer).float()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        torch.save({"key": key, "logps": logps}, tmp)
        tmp.replace(cache)
    return logps


def dpo_train(
    model,
    tokenizer,
    rows: Sequence[Encoded],
    ref: torch.Tensor,
    cfg: DPOConfig,
) -> list[dict[str, float]]:
    """Train `model` in place with the DPO loss on encoded pairs; `ref` [P, 2] holds the
    reference log-probs of every pair (computed before the first step). Returns the
    metrics of every optimizer step. The optimizer, schedule (linear warm-up, then
    constant) and loop are `k15rl.trainer.finetune.train_steps`."""
    from k15rl.models.loading import model_device
    from k15rl.trainer.finetune import StepSettings, autocast, train_steps

    if len(rows) != ref.shape[0]:
        raise ValueError(f"{len(rows)} pairs but {ref.shape[0]} reference log-prob rows")
    rng = random.Random(cfg.seed)
    batches = []
    for _ in range(cfg.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        batches += [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    device = model_device(model)  # placed by the caller (`on_device`)
    ref = ref.to(device)

    def loss_fn(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(cfg.autocast_bf16, device):
            logps = sequence_logps(model, [rows[i] for i in idx], tokenizer.pad_token_id, tokenizer)  # [B, 2]
        r = ref[idx]  # [B, 2]
        loss, m = dpo_loss(logps[:, 0], logps[:, 1], r[:, 0], r[:, 1], beta=cfg.beta)
        if cfg.sft_weight:
            n_chosen = torch.tensor([len(rows[i].chosen) for i in idx], dtype=logps.dtype, device=device)  # [B]
            nll = -(logps[:, 0] / n_chosen).mean()
            loss = loss + cfg.sft_weight * nll
            m["dpo/nll_chosen"] = nll.item()
        return loss, m

    settings = StepSettings(lr=cfg.lr, warmup_frac=cfg.warmup_frac, min_lr_frac=1.0, weight_decay=0.0,
                            grad_clip=cfg.grad_clip)
    steps = train_steps(model, batches, loss_fn, settings, desc="dpo",
                        postfix=lambda s: {"loss": f"{s.metrics['dpo/loss']:.3f}", "acc": f"{s.metrics['dpo/accuracy']:.2f}"})
    return [{**s.metrics, "dpo/grad_norm": s.grad_norm} for s in steps]
