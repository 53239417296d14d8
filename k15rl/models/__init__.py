"""Model loading (any Hugging Face causal LM) and the built-in tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def resolve_model_path(path: str, key: str = "model.path", log: Callable[[str], None] = print) -> Path:
    """The model folder for `path`: "builtin" (built and cached on first use) or a
    local Hugging Face folder (checked; UserError naming `key` otherwise)."""
    if path == "builtin":
        from k15rl.models.builtin import ensure_builtin

        return ensure_builtin(log=log)
    from k15rl.models.loading import check_model_path

    return check_model_path(path, key)
