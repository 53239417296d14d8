"""Loading any local Hugging Face causal LM and rendering prompts with its chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from k15rl.errors import UserError

# A fallback for tokenizers without a chat template (base models): question, then the
# response after a newline. Chosen with `model.chat_template: plain`.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Answer: {{ m['content'] }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer: {% endif %}"
)


def torch_dtype(name: str):
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"dtype {name!r} is not one of {', '.join(dtypes)}")
    return dtypes[name]


def load_tokenizer(path: str | Path, chat_template: str | None = None):
    """The tokenizer of `path`, with a chat template: its own, or `chat_template`
    ("plain" or a Jinja string) when given. Raises UserError if it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if chat_template == "plain":
        tok.chat_template = PLAIN_TEMPLATE
    elif chat_template:
        tok.chat_template = chat_template
    if not getattr(tok, "chat_template", None):
        raise UserError(
            f"tokenizer at {path} has no chat template: set model.chat_template "
            "to 'plain' or to a Jinja template"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, dtype: str = "float32"):
    """`AutoModelForCausalLM` from a local folder, in `dtype`, in train mode off."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    model.eval()
    return model


def check_model_path(path: str | Path, key: str = "model.path") -> Path:
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").exists():
        raise UserError(f"{key}: {path} is not a Hugging Face model folder (no config.json there)")
    return p


def encode_prompt(tokenizer, messages: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of the chat `messages` followed by the assistant turn's opening."""
    chat = [{"role": r, "content": c} for r, c in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, response: str) -> list[int]:
    """Token ids of a response, ending with the end-of-turn (EOS) token."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS ids: the tokenizer's and the model's generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    return sorted(i for i in ids if i is not None)
