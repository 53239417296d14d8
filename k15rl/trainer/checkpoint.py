"""Atomic checkpoints and run-folder bookkeeping."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k15rl.errors import UserError
from k15rl.models.lora import save_model
from k15rl.trainer.card import CARD, run_card
from k15rl.trainer.jsonl import read_jsonl

CHECKPOINTS = "checkpoints"
LATEST = "latest"  # a file in CHECKPOINTS naming the newest complete checkpoint
OPTIMIZER = "optimizer.pt"  # in a checkpoint: the optimizer's state when it carries over iterations


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_hf(model, tokenizer, dest: Path, extra: dict[str, Any] | None = None, card: str | None = None,
            optimizer: dict | None = None) -> Path:
    """Write model + tokenizer (+ `state.json`, + the model card `card` as README.md,
    k15rl/trainer/card.py, + the optimizer's state_dict as `optimizer.pt`) to `dest` atomically: into a temporary sibling folder,
    fsync'ed, then renamed over. A crash mid-write leaves no folder that looks complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        save_model(model, tmp)  # with LoRA: the merged weights, and the adapter in adapter/
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / "state.json").write_text(json.dumps(extra, indent=2, default=str))
        if card is not None:
            (tmp / CARD).write_text(card)
        if optimizer is not None:
            import torch

            torch.save(optimizer, tmp / OPTIMIZER)
        _fsync_tree(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except OSError as e:  # disk full, permissions: nothing half-written is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write {dest}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states as JSON-able data."""
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save_checkpoint(out: Path, iteration: int, model, tokenizer, state: dict[str, Any], keep: int,
                    optimizer: dict | None = None) -> Path:
    """OUT/checkpoints/iter_<iteration>/ (model, tokenizer, state.json, the optimizer's
    state when it carries over iterations) written atomically,
    then `latest` pointed at it; only the newest `keep` checkpoints are kept (0 = all).
    Its model card comes from the state's config and OUT/eval.jsonl so far."""
    root = Path(out) / CHECKPOINTS
    card = run_card(state["config"], iteration, read_jsonl(Path(out) / "eval.jsonl")) if "config" in state else None
    dest = save_hf(model, tokenizer, root / f"iter_{iteration:06d}", state, card=card, optimizer=optimizer)
    write_text_atomic(root / LATEST, dest.name + "\n")
    if keep > 0:
        for old in complete_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def complete_checkpoints(out: Path) -> list[Path]:
    """Checkpoint folders whose write finished (they hold state.json), oldest first.
    Temporary folders of an interrupted write start with '.' and are never listed."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("iter_*") if (p / "state.json").is_file() and (p / "config.json").is_file())


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one, else None."""
    pointer = Path(out) / CHECKPOINTS / LATEST
    if pointer.is_file():
        named = pointer.parent / pointer.read_text().strip()
        if named in complete_checkpoints(out):
            return named
    found = complete_checkpoints(out)
    return found[-1] if found else None


def truncate_jsonl(path: Path, lines: int) -> None:
    """Keep the first `lines` lines of a JSON-lines file (rows written after a checkpoint
    are dropped on resume, so no iteration appears twice). A torn last line goes too."""
    path = Path(path)
    if not path.exists():
        return
    kept = [x for x in path.read_text().splitlines(keepends=True) if x.endswith("\n")][:lines]
    write_text_atomic(path, "".join(kept))


class JsonlLog:
    """Append-only JSON-lines file, flushed per line; `lines` counts the rows in it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lines = len(read_jsonl(self.path))
        self.f = open(self.path, "a")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        self.lines += 1

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

