"""The built-in model: a tiny Llama-style causal LM with its own tokenizer.

Built by the project itself: a byte-level BPE tokenizer (digits always single tokens,
so arithmetic is learnable) trained with `tokenizers` on the warm-up corpus, a random
`LlamaForCausalLM`, then the long-CoT SFT warm-up (report §2.2). The result is an
ordinary Hugging Face folder, cached so later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k15rl.tasks import Problem, get_task, make_prompts

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


def cache_root() -> Path:
    """Where built models live: $K15RL_CACHE, else ~/.cache/k15rl."""
    return Path(os.environ.get("K15RL_CACHE", Path.home() / ".cache" / "k15rl"))


def spec_hash(spec: BuiltinSpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]


def warmup_examples(spec: BuiltinSpec) -> list[tuple[list[dict], str]]:
    """(chat messages, long-CoT response) pairs for the SFT warm-up, from the train split."""
    rng = random.Random(spec.seed)
    examples = []
    for name in spec.tasks:
        task = get_task(name)
        for level, n in zip(spec.levels, spec.sft_per_level):
            if level not in task.levels:
                continue
            for p in make_prompts(task, "train", n, (level,), seed=spec.seed):
                trace = task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng)
                examples.append(([{"role": r, "content": c} for r, c in p.messages], trace))
    rng.shuffle(examples)
    return examples


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


def ensure_builtin(spec: BuiltinSpec | None = None, *, log=print) -> Path:
    """Path of the warm-up-trained built-in model, building it first if not cached.

    The folder is written to a temporary name and renamed when complete, so an
    interrupted build never leaves a folder that looks finished.
    """
    from k15rl.trainer.sft import SFTConfig, sft_train

    spec = spec or BuiltinSpec()
    final = cache_root() / f"builtin-{spec_hash(spec)}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the built-in model (cached in {final}) ...")
    examples = warmup_examples(spec)
    tokenizer = build_tokenizer([m[-1]["content"] + "\n" + r for m, r in examples], spec.vocab_size)
    model = build_model(spec, tokenizer)
    cfg = SFTConfig(epochs=spec.sft_epochs, lr=spec.sft_lr, batch_size=spec.sft_batch_size, seed=spec.seed)
    sft_train(model, tokenizer, examples, cfg, log=log)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "k15rl_builtin.json").write_text(json.dumps(asdict(spec), indent=2))
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final
