"""The built-in model: a tiny Llama-style causal LM with its own tokenizer.

Built by the project itself: a byte-level BPE tokenizer (digits always single tokens,
so arithmetic is learnable) trained with `tokenizers` on the warm-up corpus, a random
`LlamaForCausalLM`, then the long-CoT SFT warm-up (report §2.2). This module holds what
the model is: its spec, tokenizer, architecture and cache folder. The build with the
warm-up is `ensure_builtin` in the trainer's `warmup.py` (it trains, so it sits above models/);
the result is an ordinary Hugging Face folder, cached in `builtin_dir(spec)` so later
runs reuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k15rl.models.vision import VisionSpec
from k15rl.types import Prompt

SPEC_FILE = "k15rl_builtin.json"  # a built-in model folder's spec, written by its build
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Jinja chat template of the built-in tokenizer: role tags, no whitespace added.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class BuiltinSpec:
    """Everything that determines the built-in model; its hash names the cache folder."""

    tasks: list[str] = field(default_factory=lambda: ["sort"])
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    # Warm-up data per level; fewer hard examples keep the warm-up model imperfect there.
    sft_per_level: list[int] = field(default_factory=lambda: [700, 700, 700, 600, 300, 150])
    vocab_size: int = 512
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    max_positions: int = 1024
    sft_epochs: int = 4
    sft_lr: float = 3e-3
    sft_batch_size: int = 16
    seed: int = 0
    vision: VisionSpec | None = None  # set: a vision-language model (LLaVA-shaped, models/vision.py)


# Named specs a config can ask for as `model.path` (or --model). "builtin-long" is sized
# for the long-CoT workload (`subset_sum`: depth-first search traces up to about 2,000
# tokens with their prompts, so 2,048 positions; tests/test_long_cot_task.py measures it).
BUILTIN_SPECS: dict[str, BuiltinSpec] = {
    "builtin": BuiltinSpec(),
    "builtin-long": BuiltinSpec(
        tasks=["subset_sum"],
        levels=[1, 2, 3, 4, 5, 6],
        sft_per_level=[400, 500, 600, 600, 500, 400],
        hidden_size=256,
        intermediate_size=768,
        num_layers=6,
        num_heads=8,
        max_positions=2048,
        sft_epochs=4,
        sft_lr=2e-3,
        sft_batch_size=8,
    ),
    # The built-in VLM: a CLIP tower (2 layers, 64 wide) on 96x96 images, 64 image tokens
    # each, and a language model the size of the default one; the built-in visual tasks.
    "builtin-vision": BuiltinSpec(
        tasks=["vis_count", "vis_where", "vis_pattern", "vis_bars", "vis_text", "vis_sort"],
        levels=[1, 2, 3, 4, 5],
        sft_per_level=[400, 400, 400, 300, 200],
        max_positions=512,
        sft_epochs=12,
        sft_lr=1.5e-3,
        vision=VisionSpec(),
    ),
}


def cache_root() -> Path:
    """Where built models live: $K15RL_CACHE, else ~/.cache/k15rl."""
    return Path(os.environ.get("K15RL_CACHE", Path.home() / ".cache" / "k15rl"))


# Train problems per task and level whose warm-up examples enter the cache name, and the
# seeds each one's trace is written with.
WARMUP_SAMPLE = 4
TRACE_SEEDS = 4


def warmup_digest(spec: BuiltinSpec) -> str:
    """A fingerprint of the data the warm-up of `spec` trains on: the first `WARMUP_SAMPLE`
    train problems of each task and level (the warm-up's first, `warmup_prompts`), with
    their messages, pixels and answers, and each one's warm-up trace under `TRACE_SEEDS`
    seeds, so that a trace's random branches (overthinking, a mistake redone: most
    traces take one) are written too. A change to how a task draws, splits, words,
    renders or traces its problems changes it. Not the whole warm-up set: drawing it
    costs seconds at every lookup (10,200 rendered images for the VLM), and its traces
    share one random stream, so no sample of them can be written alone."""
    from PIL import Image

    from k15rl.tasks import Problem, get_task, make_prompts

    h = hashlib.sha256()
    for name in spec.tasks:
        task = get_task(name)
        for level in (lv for lv in spec.levels if lv in task.levels):
            for p in make_prompts(task, "train", WARMUP_SAMPLE, (level,), seed=spec.seed):
                problem = Problem(p.question, p.answer, p.level, p.meta)
                traces = [task.warmup_trace(problem, random.Random(f"{spec.seed}/{i}")) for i in range(TRACE_SEEDS)]
                h.update(json.dumps([p.messages, p.answer, traces]).encode())
                for image in p.images:  # the pixels the model sees, not the PNG bytes (zlib's choice)
                    with Image.open(io.BytesIO(image)) as img:
                        rgb = img.convert("RGB")
                        h.update(json.dumps(rgb.size).encode() + rgb.tobytes())
    return h.hexdigest()


def spec_hash(spec: BuiltinSpec) -> str:
    """The cache name's hash: the spec's fields and `warmup_digest`, so that a cached model
    is never one warmed up on problems or traces its tasks no longer make."""
    fields = {**asdict(spec), "warmup": warmup_digest(spec)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def builtin_dir(spec: BuiltinSpec) -> Path:
    """The cache folder of the built-in model `spec` describes (named by its hash)."""
    return cache_root() / f"builtin-{spec_hash(spec)}"


def warmup_prompts(spec: BuiltinSpec) -> list[Prompt]:
    """The train-split prompts whose traces the warm-up of `spec` fits (report §2.2), per
    task and level, in the order the warm-up draws them (`trainer/warmup.py`)."""
    from k15rl.tasks import get_task, make_prompts

    prompts: list[Prompt] = []
    for name in spec.tasks:
        task = get_task(name)
        for level, n in zip(spec.levels, spec.sft_per_level):
            if level in task.levels:
                prompts += make_prompts(task, "train", n, (level,), seed=spec.seed)
    return prompts


def builtin_name(path: str | Path) -> str | None:
    """The `BUILTIN_SPECS` name of `path`: a name itself, or the cache folder of one."""
    if str(path) in BUILTIN_SPECS:
        return str(path)
    folder = Path(path).expanduser().resolve()
    return next((name for name, spec in BUILTIN_SPECS.items() if builtin_dir(spec).resolve() == folder), None)


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, digits split one per token,
    wrapped as a `PreTrainedTokenizerFast` with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(spec: BuiltinSpec, tokenizer):
    """A randomly initialised tiny `LlamaForCausalLM` sized by `spec`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)
