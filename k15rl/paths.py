"""The one check on output paths the user names (OUT folders, --out / --output files),
made by every command before it reads a model or writes anything, so that a bad path
ends with one line instead of a traceback half-way through, and leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from k15rl.errors import UserError

# Kernel file systems: not places to write results to (writes fail or mean something else).
VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"))


def _virtual_root(path: Path) -> Path | None:
    """The kernel file system (/proc, /sys) `path` lies under, if any.

    >>> _virtual_root(Path("/proc/self/out")), _virtual_root(Path("/tmp/out"))
    (PosixPath('/proc'), None)
    """
    return next((root for root in VIRTUAL_ROOTS if path == root or root in path.parents), None)


def _nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (`path` is absolute)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(path: str | Path, key: str, folder: bool = True, overwrite: bool = True) -> Path:
    """`path` as a place this command can write its output to: a folder (`folder`) or a
    file, which may not exist yet. Refused with a UserError naming `key` and the path:
    a path under /proc or /sys; an existing file where a folder is wanted or a folder
    where a file is; an existing file when not `overwrite` (a command's --overwrite); a
    path below a file; one whose nearest existing folder cannot be written to (a
    read-only file system, which `os.access` reports even to root, or no permission).
    Nothing is created; returns `path` as a Path."""
    p = Path(path).expanduser()
    where = f"{key} {path}"
    root = _virtual_root(p.absolute().resolve())
    if root is not None:
        raise UserError(f"{where}: lies under {root}, a kernel file system; choose a folder on disk")
    if p.exists() and p.is_dir() != folder:
        kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file")
        raise UserError(f"{where}: is {kind}, not {wanted}; choose another path")
    if not folder and not overwrite and p.is_file():
        raise UserError(f"{where}: already exists; pass --overwrite to replace it, or choose another path")
    target = p.absolute()
    base = _nearest_existing(target if folder else target.parent)
    if not base.is_dir():
        raise UserError(f"{where}: {base} is a file, so nothing can be created below it")
    for place in (base, p) if p.is_file() else (base,):
        if not os.access(place, os.W_OK | (os.X_OK if place.is_dir() else 0)):
            raise UserError(f"{where}: {place} is not writable (read-only file system or no permission)")
    return p


def check_model_output(path: str | Path, key: str, overwrite: bool) -> Path:
    """`path` as the folder a command writes a whole model to, replacing the folder: as
    `check_output_path`, and refused if it already holds a model (a config.json) unless
    `overwrite`, or if it holds anything else at all (a run folder, the user's files),
    which writing the model would delete."""
    p = check_output_path(path, key)
    if (p / "config.json").exists():
        if not overwrite:
            raise UserError(f"output folder {path} already holds a model: pass --overwrite or choose another {key}")
    elif p.is_dir() and any(p.iterdir()):
        raise UserError(f"output folder {path} is not empty and holds no model (writing the model would replace "
                        f"it): choose another {key}")
    return p
