"""Prompt sets (report §2.1): loaders for data files, built-in tasks, curation and
difficulty estimation.

    load_file / build_prompt_sets   files (JSONL, JSON, CSV, Parquet, datasets folders) + tasks
    fit_context                     drop prompts longer than the model's context
    k15rl.data.curate               filters of report §2.1: multiple choice, true/false, proofs, easy to hack
    k15rl.data.difficulty           pass rate of each prompt under a model (report §2.3.4)
    k15rl.data.export               built-in and reasoning-gym tasks as JSONL
"""

import json
import os
from pathlib import Path
from typing import Iterable

from k15rl.data.build import (
    DataReport,
    FileReport,
    PromptSets,
    build_prompt_sets,
    build_prompts,
    fit_context,
    load_file,
    load_files,
    prompt_key,
    prompt_token_limit,
)
from k15rl.data.readers import FORMATS, RawRow, detect_format, read_rows
from k15rl.data.rows import CANDIDATES, BadRow, prompt_to_row, row_to_prompt


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write dict rows as JSON lines (atomically: a temporary file, then a rename);
    returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


__all__ = [
    "CANDIDATES",
    "FORMATS",
    "BadRow",
    "DataReport",
    "FileReport",
    "PromptSets",
    "RawRow",
    "build_prompt_sets",
    "build_prompts",
    "detect_format",
    "fit_context",
    "load_file",
    "load_files",
    "prompt_key",
    "prompt_to_row",
    "prompt_token_limit",
    "read_rows",
    "row_to_prompt",
    "write_jsonl",
]
