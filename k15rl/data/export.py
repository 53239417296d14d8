"""Built-in and reasoning-gym tasks as prompt-set rows (the JSONL layout that
`k15rl.data` loads back; see `prompt_to_row`).

Built-in tasks keep their own verifier (`verifier: sort`, ...). reasoning-gym tasks
(`rg:NAME`, needs `pip install 'k15rl[data]'`, imported only here) are written with a
value-checking verifier (`math` by default). That is right for tasks whose answer is one
value (gsm_symbolic, basic_arithmetic, chain_sum, ...), not for tasks with many valid
answers (countdown: any expression that reaches the target): those need reasoning-gym's
own scorer, which this export does not carry over.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from k15rl.data.rows import prompt_to_row
from k15rl.errors import UserError

RG_PREFIX = "rg:"


def builtin_rows(task_name: str, levels: tuple[int, ...], n_per_level: int, split: str, seed: int) -> list[dict]:
    """`n_per_level` problems per level of a built-in task, one split, as rows."""
    from k15rl.tasks import get_task, make_prompts

    try:
        task = get_task(task_name)
        prompts = make_prompts(task, split, n_per_level, levels, seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    rows = []
    for p in prompts:
        row = prompt_to_row(p)
        row["domain"] = task_name
        rows.append(row)
    return rows


def reasoning_gym_rows(name: str, n: int, seed: int, verifier: str = "math",
                       log: Callable[[str], None] = print) -> list[dict]:
    """`n` items of the reasoning-gym dataset `name` as rows. Items whose own answer the
    verifier does not accept are left out and counted (the log says how many)."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("reasoning-gym tasks need the reasoning-gym package: pip install 'k15rl[data]'") from None
    from k15rl.rewards.lookup import verifier_for

    try:
        ds = reasoning_gym.create_dataset(name, size=n, seed=seed)
    except (ValueError, KeyError) as e:
        raise UserError(f"reasoning-gym dataset {name!r}: {e}") from None
    verify = verifier_for(verifier)
    rows, bad, example = [], 0, None
    for i, item in enumerate(_items(ds)):
        answer = str(item["answer"]).strip()
        if not answer or not verify(f"answer: {answer}", answer):
            bad += 1
            example = example or f"item {i}: answer {answer!r}"
            continue
        row: dict[str, Any] = {"id": f"rg-{name}-{seed}-{i}", "prompt": item["question"], "answer": answer,
                               "verifier": verifier, "domain": name}
        rows.append(row)
    if bad:
        log(f"export: {bad} of {n} {name} items left out: verifier {verifier!r} does not accept their own answer "
            f"(e.g. {example})")
    if not rows:
        raise UserError(f"reasoning-gym dataset {name!r}: verifier {verifier!r} accepts none of its answers "
                        f"(e.g. {example}): choose another --verifier")
    return rows


def _items(ds) -> Iterator[dict]:
    for i in range(len(ds)):
        yield ds[i]


def export_rows(task: str, *, levels: tuple[int, ...], n: int, split: str, seed: int, verifier: str = "math",
                log: Callable[[str], None] = print) -> list[dict]:
    """Rows of a built-in task (n per level) or of `rg:NAME` (n items)."""
    if task.startswith(RG_PREFIX):
        return reasoning_gym_rows(task[len(RG_PREFIX):], n, seed, verifier, log)
    return builtin_rows(task, levels, n, split, seed)
