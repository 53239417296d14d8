"""The built-in model's long-CoT SFT warm-up (report §2.2), built once and cached.

`k15rl.models.builtin` says what the model is (spec, tokenizer, architecture, cache
folder); this module trains it: warm-up traces of the built-in tasks (planning,
checking, backtracking), `sft_train`, then an atomic save into `builtin_dir(spec)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from k15rl.models.builtin import SPEC_FILE, BuiltinSpec, build_model, build_tokenizer, builtin_dir, warmup_prompts
from k15rl.models.vision import IMAGE_TOKEN, VisionTokenizer, build_processor, build_vlm
from k15rl.tasks import Problem, get_task
from k15rl.trainer.sft import SFTConfig, sft_train


def warmup_examples(spec: BuiltinSpec) -> list[tuple[list[dict], str]]:
    """(chat messages, long-CoT response) pairs for the SFT warm-up, from the train split."""
    rng = random.Random(spec.seed)
    tasks = {name: get_task(name) for name in spec.tasks}
    examples = []
    for p in warmup_prompts(spec):
        trace = tasks[p.task].warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng)
        messages = [{"role": r, "content": c} for r, c in p.messages]
        if p.images:  # with the message that holds their placeholders
            messages[-1]["images"] = p.images
        examples.append((messages, trace))
    rng.shuffle(examples)
    return examples


def ensure_builtin(spec: BuiltinSpec | None = None, *, log: Callable[[str], None] = print) -> Path:
    """Path of the warm-up-trained built-in model, building it first if not cached.

    The folder is written to a temporary name and renamed when complete, so an
    interrupted build never leaves a folder that looks finished.
    """
    spec = spec or BuiltinSpec()
    final = builtin_dir(spec)
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the built-in model (cached in {final}) ...")
    examples = warmup_examples(spec)
    tokenizer = build_tokenizer([m[-1]["content"] + "\n" + r for m, r in examples], spec.vocab_size)
    # A VLM (report §2.3.5): the tokenizer gains an <image> token first, the language model
    # is then sized with it and becomes the text half of a LLaVA model.
    processor = build_processor(tokenizer, spec.vision) if spec.vision is not None else None
    model = build_model(spec, tokenizer)
    if processor is not None:
        model = build_vlm(model.config, spec.vision, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        tokenizer = VisionTokenizer(processor)
    # Examples are cut at the model's positions, not at SFTConfig's default (long-CoT traces).
    cfg = SFTConfig(epochs=spec.sft_epochs, lr=spec.sft_lr, batch_size=spec.sft_batch_size,
                    max_length=spec.max_positions, seed=spec.seed)
    sft_train(model, tokenizer, examples, cfg, log=log)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final
