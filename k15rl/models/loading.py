"""Loading any local Hugging Face causal LM and rendering prompts with its chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

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
    ("plain" or a Jinja string) when given. Raises UserError if it has none, or if the
    tokenizer files cannot be loaded. For a vision-language model folder: a
    `VisionTokenizer` (its tokenizer and `AutoProcessor`, `k15rl.models.vision`)."""
    from transformers import AutoProcessor, AutoTokenizer

    from k15rl.models.vision import VisionTokenizer, is_vision_folder

    if is_vision_folder(path):
        tok = VisionTokenizer(load_or_fail(f"{path}: cannot load the processor", AutoProcessor.from_pretrained,
                                           str(path)))
    else:
        tok = load_or_fail(f"{path}: cannot load the tokenizer", AutoTokenizer.from_pretrained, str(path))
    text = tok.tokenizer if isinstance(tok, VisionTokenizer) else tok  # prompts are rendered by the tokenizer
    if chat_template == "plain":
        text.chat_template = PLAIN_TEMPLATE
    elif chat_template:
        text.chat_template = chat_template
    if not getattr(text, "chat_template", None):
        raise UserError(
            f"tokenizer at {path} has no chat template: set model.chat_template "
            "to 'plain' or to a Jinja template"
        )
    if text.pad_token_id is None:
        text.pad_token = text.eos_token
    return tok


def load_model(path: str | Path, dtype: str = "float32"):
    """`AutoModelForCausalLM` from a local folder (`AutoModelForImageTextToText` for a
    vision-language model), in `dtype`, in train mode off."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from k15rl.models.vision import is_vision_folder

    auto = AutoModelForImageTextToText if is_vision_folder(path) else AutoModelForCausalLM
    model = load_or_fail(f"{path}: cannot load the model", auto.from_pretrained, str(path), dtype=torch_dtype(dtype))
    model.eval()
    check_finite(model, path)
    return model


def check_finite(model, path: str | Path) -> None:
    """A model whose weights hold inf or nan (a diverged run's, a damaged file) samples
    nothing sensible and fails deep inside sampling: refused here, naming the weight."""
    import torch

    with torch.no_grad():
        bad = next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise UserError(f"{path}: weight {bad} holds inf or nan values (a diverged or damaged model)")


def check_device(device: str, key: str = "distributed.device") -> str:
    """The kind of `device` ("cpu" or "cuda"); a device this machine lacks, or one that is
    neither, is a one-line UserError naming `key`."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"{key}: unknown device {device!r} (cpu or cuda)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}={device}: no CUDA device is available here (torch.cuda.is_available() is False)")
    if kind not in ("cpu", "cuda"):
        raise UserError(f"{key}: unsupported device {device!r} (cpu or cuda)")
    return kind


def on_device(model, device: str, key: str = "distributed.device"):
    """`model` moved to `device` ("cpu", "cuda", "cuda:1"): the one place a model is put
    on the configured device (distributed.device, which training uses too; sft/dpo
    --device). Everything the model then computes follows its parameters
    (`model_device`). A device this machine lacks is a one-line UserError naming `key`."""
    return model if check_device(device, key) == "cpu" else model.to(device)


def model_device(model):
    """The device of `model`'s parameters: where its inputs go and which autocast applies."""
    return next(model.parameters()).device


def cache_kwarg(model) -> str | None:
    """The forward's KV-cache argument: `cache` (transformers >= 5.x), `past_key_values`
    (older), or None when it names neither (it may still take them through **kwargs)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def load_or_fail(failure: str, load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`load(*args, **kwargs)` (a `from_pretrained`); an error loading user files that
    `check_model_folder` cannot see coming (an unknown model_type, weights that do not
    fit the config, a corrupt tokenizer.json or GGUF file) becomes one UserError line:
    `failure` (which names the file or folder), then the reason."""
    try:
        return load(*args, **kwargs)
    except Exception as e:  # third-party parsers of user files raise anything (struct.error, ...)
        reason = " ".join(str(e).split()) or type(e).__name__  # one line
        raise UserError(f"{failure} ({reason[:300]})") from None


# A tokenizer's vocabulary is in one of these (fast tokenizers, SentencePiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object; UserError naming the file otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_model_config(folder: Path) -> dict[str, Any]:
    """`folder/config.json`: a JSON object with a `model_type`; UserError naming the file otherwise."""
    path = folder / "config.json"
    config = read_json_object(path)
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise UserError(f"{path}: no 'model_type' (the architecture, e.g. \"llama\"): not a Hugging Face model config")
    return config


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a model folder: the shards its
    `model.safetensors.index.json` names, else every `*.safetensors` there."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(folder.glob("*.safetensors"))
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: no 'weight_map' (tensor name -> shard file)")
    return [folder / name for name in sorted(set(map(str, weight_map.values())))]


def check_safetensors(path: Path) -> None:
    """`path` is a complete safetensors file: its header parses and covers the file
    (reads the header only, not the weights). UserError naming the file otherwise
    (missing, empty, truncated, not safetensors)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"{path}: missing (a weight file of the model)")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a complete safetensors file ({path.stat().st_size} bytes; {e}): "
                        "truncated or corrupt, copy or save the model again") from None


def check_model_folder(path: str | Path, key: str = "model.path") -> Path:
    """`path` as a loadable Hugging Face model folder, checked cheaply before anything is
    written: config.json (a JSON object with a model_type), the weights (every
    safetensors file's header; PyTorch `.bin` files are left to transformers) and the
    tokenizer files. Raises UserError naming `key`, the file, or what is missing."""
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").exists():
        raise UserError(f"{key}: {path} is not a Hugging Face model folder (no config.json there)")
    try:
        read_model_config(p)
        weights = safetensors_files(p)
        for f in weights:
            check_safetensors(f)
        for name in ("tokenizer_config.json", "tokenizer.json"):
            if (p / name).is_file():
                read_json_object(p / name)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None
    if not weights and not any(p.glob("*.bin")):
        raise UserError(f"{key}: {path} holds no weights (no model.safetensors, shards or pytorch_model.bin)")
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{key}: {path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): "
                        "save the tokenizer into the model folder")
    return p


def model_positions(model_config) -> int | None:
    """The model's context length (max_position_embeddings; a VLM's is its text_config's)."""
    n = getattr(model_config, "max_position_embeddings", None)
    return n if n is not None else getattr(getattr(model_config, "text_config", None), "max_position_embeddings", None)


def encode_prompt(tokenizer, messages: Sequence[tuple[str, str]], images: Sequence[bytes] = ()) -> list[int]:
    """Token ids of the chat `messages` followed by the assistant turn's opening. With
    `images` (PNG bytes, one per `<image>` placeholder in the text) the tokenizer must be a
    `VisionTokenizer`, which expands each placeholder into the model's image tokens."""
    chat = [{"role": r, "content": c} for r, c in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    if hasattr(tokenizer, "encode_chat"):
        return tokenizer.encode_chat(text, images)
    if images:
        raise UserError(f"a prompt has {len(images)} image(s) but the model is text-only (no vision_config in its "
                        "config.json): use a vision-language model (model.path=builtin-vision)")
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
