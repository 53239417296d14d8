"""Reading a run's JSON-lines logs (metrics.jsonl, eval.jsonl): standard library only, so
that `k15rl show` starts without torch."""

from __future__ import annotations

import json
from pathlib import Path

from k15rl.errors import UserError


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The rows of a run's JSON-lines log (of its first `limit` lines); a missing file has
    none. A last line without its newline that does not parse is a write cut short by a
    kill (`torn_tail`): left out, as resuming drops it. Any other line that is not a JSON
    object is a UserError naming the file and line: the log was damaged, and nothing
    reading it should guess."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")[:limit]
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and limit is None:  # the last line, with no newline after it: torn
                break
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg}); the run's log is damaged") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: not a JSON object; the run's log is damaged")
        rows.append(row)
    return rows


def torn_tail(path: str | Path) -> bool:
    """Whether `path` ends with a line that a kill cut short (no newline, not JSON)."""
    path = Path(path)
    if not path.is_file():
        return False
    last = path.read_text().split("\n")[-1]
    if not last.strip():
        return False
    try:
        json.loads(last)
    except json.JSONDecodeError:
        return True
    return False
