"""Supervised fine-tuning with loss on response tokens only (long-CoT warm-up, report §2.2)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from k15rl.data.readers import read_jsonl_objects
from k15rl.data.rows import with_row_images
from k15rl.errors import UserError
from k15rl.models.loading import encode_prompt, encode_response, model_device
from k15rl.trainer.finetune import StepSettings, autocast, train_steps
from k15rl.trainer.logprobs import collate, token_logprobs


@dataclass
class SFTConfig:
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 16
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1  # cosine decay to this fraction of lr
    weight_decay: float = 0.0
    max_length: int = 1024
    autocast_bf16: bool = False
    seed: int = 0


def load_sft_jsonl(path: str | Path) -> list[tuple[list[dict], str]]:
    """(messages, response) pairs from a JSONL file of {"prompt", "response"} objects.

    `prompt` is a string (one user message) or a list of chat messages; `images`, optional,
    the prompt's images as in data files (the last message carries them). A bad line raises
    UserError naming the file, line and field (read by `k15rl.data.readers.read_jsonl_objects`).
    """
    path = Path(path)
    out = []
    for lineno, row in read_jsonl_objects(path, ("prompt", "response")):
        prompt, response = row["prompt"], row["response"]
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            messages = prompt
        else:
            raise UserError(f"{path}:{lineno}: field 'prompt' must be a string or a list of chat messages")
        if not isinstance(response, str):
            raise UserError(f"{path}:{lineno}: field 'response' must be a string")
        if not response.strip():
            raise UserError(f"{path}:{lineno}: field 'response' is empty")
        out.append((with_row_images(messages, row, path, lineno), response))
    if not out:
        raise UserError(f"data file {path} holds no examples")
    return out


def _length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): shuffle, sort within windows
    of 16 batches, cut into batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 16 * batch_size
    order = [i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lengths.__getitem__)]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def sft_train(
    model,
    tokenizer,
    examples: Sequence[tuple[list[dict], str]],
    cfg: SFTConfig,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Train `model` in place on (messages, response) pairs; returns the loss per step.

    Loss = mean negative log-likelihood over response tokens (prompt tokens masked out).
    A message may carry `"images"` (PNG bytes, one per `<image>` in its content) for a
    vision-language model.
    The optimizer, schedule and loop are `k15rl.trainer.finetune.train_steps`.
    """
    encoded, images, cut = [], [], 0
    for n, (messages, response) in enumerate(examples, 1):
        pngs = tuple(png for m in messages for png in m.get("images", ()))  # a message's own images
        p = encode_prompt(tokenizer, [(m["role"], m["content"]) for m in messages], pngs)
        images.append(pngs)
        r = encode_response(tokenizer, response)
        if len(p) >= cfg.max_length:
            raise UserError(f"example {n}: its prompt is {len(p)} tokens, and max_length is {cfg.max_length} "
                            "(prompt and response): raise --max-length or shorten the prompt")
        if len(p) + len(r) > cfg.max_length:  # trained on as far as it fits; it loses its end of sequence
            r, cut = r[: cfg.max_length - len(p)], cut + 1
        encoded.append((p, r))
    if cut:
        log(f"sft: {cut} of {len(examples)} examples are longer than max_length {cfg.max_length} tokens; their "
            "responses are cut to fit and lose their end (raise --max-length to keep them whole)")
    rng = random.Random(cfg.seed)
    lengths = [len(p) + len(r) for p, r in encoded]
    batches = [rows for _ in range(cfg.epochs) for rows in _length_bucketed_batches(lengths, cfg.batch_size, rng)]
    device = model_device(model)  # placed by the caller (`on_device`); batches follow it

    def loss_fn(rows: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        chunk = [encoded[i] for i in rows]
        batch = collate([p for p, _ in chunk], [r for _, r in chunk], tokenizer.pad_token_id)
        batch = batch.with_images([images[i] for i in rows], tokenizer).to(device)
        with autocast(cfg.autocast_bf16, device):
            logp = token_logprobs(model, batch)  # [N, T]
        return -(logp.sum() / batch.response_mask.sum()), {}

    settings = StepSettings(lr=cfg.lr, warmup_frac=cfg.warmup_frac, min_lr_frac=cfg.min_lr_frac,
                            weight_decay=cfg.weight_decay, grad_clip=1.0)
    return [step.loss for step in train_steps(model, batches, loss_fn, settings, desc="sft")]
