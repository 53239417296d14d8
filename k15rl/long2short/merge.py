"""Model merging (report §2.4): average the weights of a long-CoT and a short-CoT model.

    merged = weight * long + (1 - weight) * short        (weight 0.5: the plain average)

Both must be the same architecture with the same tensor names and shapes; the first
difference is named. Weights are read from and written as safetensors; the output folder
holds the long model's config and tokenizer files (the tokenizers must be the same).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from k15rl.errors import UserError
from k15rl.models.loading import check_model_folder, read_model_config, safetensors_files
from k15rl.paths import check_model_output

# Files of a model folder that are not copied to the merged one: the weights (rewritten)
# and run bookkeeping.
_SKIP = {"state.json", "merge.json", "README.md", "model.safetensors.index.json", "pytorch_model.bin.index.json"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


def merge_state_dicts(long: Mapping[str, torch.Tensor], short: Mapping[str, torch.Tensor],
                      weight: float = 0.5) -> dict[str, torch.Tensor]:
    """weight * long + (1 - weight) * short for every tensor, computed in float32 and
    returned in the long model's dtype. Raises ValueError naming the first tensor
    missing from one side or with a different shape.

    >>> a, b = {"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([3.0, 5.0])}
    >>> merge_state_dicts(a, b)["w"].tolist()
    [2.0, 4.0]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1] (got {weight})")
    for name in sorted(long):
        if name not in short:
            raise ValueError(f"tensor {name!r} is in the long model but not in the short model")
    for name in sorted(short):
        if name not in long:
            raise ValueError(f"tensor {name!r} is in the short model but not in the long model")
    out = {}
    for name in sorted(long):
        a, b = long[name], short[name]
        if a.shape != b.shape:
            raise ValueError(f"tensor {name!r} has shape {list(a.shape)} in the long model and {list(b.shape)} "
                             f"in the short model")
        if not (a.is_floating_point() and b.is_floating_point()):
            if not torch.equal(a, b):
                raise ValueError(f"tensor {name!r} is not floating point and differs between the models")
            out[name] = a.clone()
            continue
        out[name] = (weight * a.float() + (1.0 - weight) * b.float()).to(a.dtype)
    return out


def _weight_files(folder: Path) -> list[Path]:
    files = safetensors_files(folder)
    if not files:
        other = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (it has {', '.join(other)}: re-save it with save_pretrained(safe_serialization=True))" if other else ""
        raise UserError(f"{folder}: no .safetensors weights{hint}")
    return files


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (one file or shards)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        out.update(load_file(str(f)))
    return out


def _config(folder: Path, flag: str) -> dict:
    return read_model_config(check_model_folder(folder, flag))


def check_compatible(long_dir: Path, short_dir: Path) -> None:
    """Same architecture and same tokenizer, else UserError naming the difference."""
    a, b = _config(long_dir, "--long"), _config(short_dir, "--short")
    for key in ("model_type", "architectures"):
        if a.get(key) != b.get(key):
            raise UserError(f"different architectures: config.json {key} is {a.get(key)!r} in {long_dir} and "
                            f"{b.get(key)!r} in {short_dir}")
    for name in _TOKENIZER_FILES:
        fa, fb = long_dir / name, short_dir / name
        if fa.is_file() and fb.is_file() and fa.read_bytes() != fb.read_bytes():
            raise UserError(f"different tokenizers: {name} differs between {long_dir} and {short_dir}")


def merge_models(long_dir: str | Path, short_dir: str | Path, out: str | Path, weight: float = 0.5,
                 overwrite: bool = False, card: str | None = None) -> Path:
    """Write weight * long + (1 - weight) * short to `out` (safetensors), with the long
    model's config and tokenizer files, a `merge.json` naming the sources and the model
    card `card` as README.md (replacing the long model's, which is not copied). The
    folder appears complete or not at all (written aside, then renamed)."""
    from safetensors.torch import save_file

    long_dir, short_dir, out = Path(long_dir), Path(short_dir), Path(out)
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"--weight must be in [0, 1] (got {weight})")
    check_compatible(long_dir, short_dir)
    check_model_output(out, "--out", overwrite)
    try:
        merged = merge_state_dicts(load_safetensors(long_dir), load_safetensors(short_dir), weight)
    except ValueError as e:
        raise UserError(f"cannot merge {long_dir} and {short_dir}: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for f in sorted(long_dir.iterdir()):
            if f.is_file() and f.suffix not in (".safetensors", ".bin") and f.name not in _SKIP:
                shutil.copy2(f, tmp / f.name)
        # tied embeddings share storage; safetensors wants distinct tensors
        save_file({k: v.contiguous().clone() for k, v in merged.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "merge.json").write_text(json.dumps(
            {"long": str(long_dir), "short": str(short_dir), "weight_long": weight, "tensors": len(merged)}, indent=2))
        if card is not None:
            (tmp / "README.md").write_text(card)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
