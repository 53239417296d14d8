"""From a file's rows to `Prompt`s: the column mapping and the checks on each field.

A field name may be dotted to reach into nested objects (`reward_model.ground_truth`,
verl's layout); a column literally named with dots (a flattened table) is found too.
Fields the config leaves unset (None) are found in each row by trying the usual names
in order (`CANDIDATES`), so the layouts in common use load without a mapping:

- plain:  {"problem": "...", "answer": "..."} or {"question": ..., "solution": ...}
- TRL:    {"prompt": [{"role": "user", "content": "..."}], "solution": "..."} or
          {"messages": [..., {"role": "assistant", "content": "... \\boxed{7}"}]}
- verl:   {"prompt": [chat], "reward_model": {"ground_truth": "7"}, "data_source": ..., "extra_info": {...}}

Images (vision-language RL, report §2.3.5) load in both layouts people use: verl's, an
`images` column and one `<image>` placeholder per image in the prompt text; TRL's, image
content parts in the messages (`{"type": "image"}`, the image itself in the part or, in
order, in the `images` column). An image is a file path (relative to the data file), bytes,
a `datasets` Image feature ({"bytes", "path"}) or a PIL image; each becomes PNG bytes in
`Prompt.meta["images"]`. A missing, corrupt or oversized image, or placeholders that do
not match the images in number, is a BadRow naming the field.

A field that holds a worked solution rather than a bare answer is reduced to its answer:
the last `\\boxed{...}` (MATH), else the text after the last `####` (GSM8K).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from k15rl.data.readers import bad_text
from k15rl.errors import UserError
from k15rl.models.vision import IMAGE_TOKEN, open_image, to_png
from k15rl.types import Prompt
from k15rl.verifiers import extract_boxed

# Names tried, in order, for each field the config leaves unset.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "problem", "question", "messages"),
    "answer": ("answer", "ground_truth", "reward_model.ground_truth", "final_answer", "solution", "target"),
    "difficulty": ("difficulty", "level"),
    "domain": ("domain", "data_source", "subject", "type", "category"),
    "test_cases": ("test_cases", "tests", "input_output", "test_list"),
    "pass_rate": ("pass_rate",),
    "id": ("id", "uid", "problem_id"),
    "verifier": ("verifier",),
    "images": ("images", "image"),
}
FIELDS = tuple(CANDIDATES)
ROLES = ("system", "user", "assistant")
DIFFICULTY_WORDS = {"easy": 1.0, "medium": 2.0, "hard": 3.0}
_MISSING = object()


class BadRow(Exception):
    """A row that cannot become a prompt: `field` is the offending field's name."""

    def __init__(self, field: str, why: str):
        super().__init__(f"field {field!r}: {why}")
        self.field, self.why = field, why


def get_field(row: dict[str, Any], name: str) -> Any:
    """`row[name]`, or the nested value a dotted name points to; `_MISSING` if absent.
    None and empty strings count as absent.

    >>> get_field({"reward_model": {"ground_truth": "7"}}, "reward_model.ground_truth")
    '7'
    >>> get_field({"a.b": 1}, "a.b")
    1
    """
    if name in row:
        value = row[name]
    else:
        value = row
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
    return _MISSING if value is None or value == "" else value


def find_field(row: dict[str, Any], role: str, columns: dict[str, str | None]) -> tuple[str, Any]:
    """(name, value) of a role's field in `row`: the configured name, else the first of
    `CANDIDATES[role]` the row has; value `_MISSING` if absent.

    >>> find_field({"problem": "1+1?", "solution": "2"}, "answer", {})
    ('solution', '2')
    """
    name = columns.get(role)
    if name is not None:
        return name, get_field(row, name)
    for name in CANDIDATES[role]:
        value = get_field(row, name)
        if value is not _MISSING:
            return name, value
    return role, _MISSING


def checked_field(row: dict[str, Any], role: str, columns: dict[str, str | None]) -> tuple[str, Any]:
    """`find_field`, the value's text checked too: a lone surrogate or a control character
    (other than tab, newline, CR) anywhere in it raises BadRow naming the field.

    >>> checked_field({"problem": "1+1?", "answer": "2"}, "prompt", {})
    ('problem', '1+1?')
    >>> checked_field({"problem": "1+1?\\x00"}, "prompt", {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    k15rl.data.rows.BadRow: field 'problem': control character U+0000 at character 4 (...)
    """
    name, value = find_field(row, role, columns)
    why = None if value is _MISSING else bad_text(value)
    if why:
        raise BadRow(name, why)
    return name, value


def _absent(row: dict[str, Any], role: str, columns: dict[str, str | None]) -> str:
    if columns.get(role) is not None:
        return "missing or empty"
    fields = ", ".join(map(str, row)) or "none"
    return f"missing: none of {', '.join(CANDIDATES[role])} (the row has {fields}); set data.columns.{role}"


def _chat(value: list, field: str, inline: list | None = None) -> list[tuple[str, str]]:
    """(role, content) pairs; image content parts become `<image>` placeholders, and the
    images parts carry themselves are appended to `inline` (in order)."""
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRow(field, f"message {i} is not an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise BadRow(field, f"message {i} has role {role!r} (expected one of {', '.join(ROLES)})")
        if isinstance(content, list):  # content parts, as in multimodal chat layouts (TRL)
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image":
                    texts.append(IMAGE_TOKEN)
                    own = next((part[k] for k in ("image", "path", "url") if part.get(k) is not None), None)
                    if own is not None and inline is not None:
                        inline.append(own)
                else:
                    raise BadRow(field, f"message {i} has a content part of type {kind!r} (text and image are "
                                        "supported)")
            content = "".join(texts)
        if not isinstance(content, str):
            raise BadRow(field, f"message {i} content is {type(content).__name__}, not text")
        messages.append((role, content))
    return messages


def parse_prompt(value: Any, field: str, inline: list | None = None) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """Chat messages from a prompt field, and the content of trailing assistant turns
    (a `messages` layout carries the reference response there; it is not part of the
    prompt). A string is one user message.

    >>> parse_prompt("1+1?", "prompt")
    ((('user', '1+1?'),), None)
    >>> parse_prompt([{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}], "messages")
    ((('user', '1+1?'),), '2')
    """
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(field, "empty prompt")
        return (("user", value),), None
    if not isinstance(value, (list, tuple)):
        raise BadRow(field, f"expected a string or a list of chat messages, got {type(value).__name__}")
    messages = _chat(list(value), field, inline)
    reference = None
    while messages and messages[-1][0] == "assistant":
        reference = messages.pop()[1]
    if not messages or messages[-1][0] != "user":
        raise BadRow(field, "the chat must end with a user message (before any assistant reply)")
    if not messages[-1][1].strip():
        raise BadRow(field, "the last user message is empty")
    return tuple(messages), reference


def load_image(value: Any, field: str, index: int, base_dir: Path | None) -> bytes:
    """One image of a row as PNG bytes: a path (relative to `base_dir`), a data URI, bytes, a
    `datasets` Image feature ({"bytes", "path"}) or a PIL image. BadRow naming the field otherwise."""
    where = f"image {index}"
    if isinstance(value, dict):  # datasets' Image feature, undecoded
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and value.startswith("data:image/"):  # a data URI (what export-data writes)
        try:
            value = base64.b64decode(value.split(",", 1)[1], validate=True)
        except (IndexError, ValueError):
            raise BadRow(field, f"{where}: not a valid base64 data URI") from None
    elif isinstance(value, str):
        if "://" in value:  # nothing is downloaded: rows name local files
            raise BadRow(field, f"{where}: {value:.80} is a URL; images are read from local files, data URIs or "
                                "bytes (download it first)")
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.is_dir():
            raise BadRow(field, f"{where}: {path} is a folder, not an image file")
        if not path.is_file():
            raise BadRow(field, f"{where}: file {path} does not exist")
        try:
            value = path.read_bytes()
        except OSError as e:
            raise BadRow(field, f"{where}: file {path} cannot be read ({e.strerror})") from None
        where = f"{where} ({path})"
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image (datasets, decoded)
        return to_png(value.convert("RGB"))
    if not isinstance(value, (bytes, bytearray)):
        raise BadRow(field, f"{where}: expected a path, bytes or an image, got {type(value).__name__}")
    try:
        return to_png(open_image(bytes(value), where))
    except UserError as e:
        raise BadRow(field, str(e)) from None


def row_images(row: dict[str, Any], columns: dict[str, str | None], messages, inline: list,
               base_dir: Path | None) -> tuple[bytes, ...]:
    """A row's images (its `images` column, else the ones its messages carry), checked against
    the prompt's `<image>` placeholders in number."""
    name, value = find_field(row, "images", columns)
    items = [] if value is _MISSING else (list(value) if isinstance(value, (list, tuple)) else [value])
    if items and inline:
        raise BadRow(name, "images given both in the column and in the messages' content parts")
    items = items or inline
    placeholders = sum(c.count(IMAGE_TOKEN) for _, c in messages)
    if placeholders != len(items):
        raise BadRow(name if items else find_field(row, "prompt", columns)[0],
                     f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the prompt but {len(items)} image(s)")
    return tuple(load_image(v, name, i, base_dir) for i, v in enumerate(items))


def image_uris(images) -> list[str]:
    """Images (PNG bytes) as data URIs: how rows this package writes hold them in JSON."""
    return ["data:image/png;base64," + base64.b64encode(png).decode() for png in images]


def images_field(prompt: Prompt) -> dict[str, list[str]]:
    """{"images": [...]} for a prompt with images (a JSONL row's field), else {}."""
    return {"images": image_uris(prompt.images)} if prompt.images else {}


def with_row_images(messages: list[dict], row: dict[str, Any], path: Path, lineno: int) -> list[dict]:
    """Chat `messages` of an SFT or DPO file's row, carrying the row's `images` (loaded as in
    data files; the last message holds them, in placeholder order). UserError naming the
    file, line and field for a bad image or a placeholder count that does not match."""
    values = row.get("images") or []
    values = values if isinstance(values, list) else [values]
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages if isinstance(m.get("content"), str))
    try:
        if placeholders != len(values):
            raise BadRow("images", f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the prompt but "
                                   f"{len(values)} image(s)")
        images = tuple(load_image(v, "images", i, path.parent) for i, v in enumerate(values))
    except BadRow as e:
        raise UserError(f"{path}:{lineno}: field {e.field!r}: {e.why}") from None
    if not images:
        return messages
    return [*messages[:-1], {**messages[-1], "images": images}]


def normalize_answer(value: Any, field: str) -> str:
    r"""The answer a verifier compares with: a bare value, or the answer inside a worked
    solution (the last \boxed{}, else the text after the last ####).

    >>> normalize_answer("so the total is \\boxed{\\frac{1}{2}}.", "solution")
    '\\frac{1}{2}'
    >>> normalize_answer("3 + 4 = 7\n#### 7", "answer"), normalize_answer(12, "answer")
    ('7', '12')
    """
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow(field, f"expected one answer (text or a number), got {type(value).__name__}")
    boxed = extract_boxed(value) if "\\boxed{" in value else None
    if boxed is not None:
        value = boxed
    elif "####" in value:
        value = value.rsplit("####", 1)[1]
    value = value.strip()
    if not value:
        raise BadRow(field, "empty answer")
    return value


def parse_difficulty(value: Any, field: str) -> float:
    """A difficulty label as a number (higher = harder): a number, "Level 3", or
    easy / medium / hard (1 / 2 / 3).

    >>> parse_difficulty("Level 4", "level"), parse_difficulty("hard", "difficulty"), parse_difficulty(2, "d")
    (4.0, 3.0, 2.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in DIFFICULTY_WORDS:
            return DIFFICULTY_WORDS[v]
        m = re.fullmatch(r"(?:level\s*)?([-+]?\d+(?:\.\d+)?)", v)
        if m:
            return float(m.group(1))
    raise BadRow(field, f"not a difficulty (a number, 'Level N', easy/medium/hard): {value!r}")


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def row_to_prompt(
    row: dict[str, Any],
    columns: dict[str, str | None],
    *,
    default_id: str,
    default_verifier: str,
    known_verifiers: frozenset[str] | set[str],
    source: str,
    system_prompt: str | None = None,
    chat_in_text: bool = False,
    base_dir: Path | None = None,
) -> Prompt:
    """One row as a `Prompt`; raises BadRow naming the field at fault.

    `columns` maps a role (a `CANDIDATES` key) to a field name; a role left out or None
    is found by its usual names, row by row. `prompt.task` is the row's verifier (its
    `verifier` field, else `default_verifier`). Difficulty, domain, test cases, pass rate
    and verl's `extra_info` go into `meta`; an integer difficulty also becomes `level`
    (per-level evaluation, curriculum). `chat_in_text`: a prompt string that holds a JSON
    chat list is read as the chat (CSV cells).
    """
    name, value = checked_field(row, "prompt", columns)
    if value is _MISSING:
        raise BadRow(name, _absent(row, "prompt", columns))
    if chat_in_text and isinstance(value, str) and value.lstrip().startswith("[{"):
        value = _maybe_json(value)
    inline: list = []
    messages, reference = parse_prompt(value, name, inline)
    images = row_images(row, columns, messages, inline, base_dir)
    if system_prompt and messages[0][0] != "system":
        messages = (("system", system_prompt),) + messages

    meta: dict[str, Any] = {"source": source}
    if images:
        meta["images"] = images
    name, tests = checked_field(row, "test_cases", columns)
    if tests is not _MISSING:
        meta["test_cases"] = _maybe_json(tests)
        if name == "test_list":  # MBPP's asserts, with the imports and set-up code its row gives them
            extra = {k: _maybe_json(row[k]) for k in ("test_imports", "test_setup_code") if row.get(k)}
            meta["test_cases"] = {"test_list": meta["test_cases"], **extra}
        from k15rl.verifiers.code import check_test_cases

        try:
            check_test_cases(meta["test_cases"], meta)
        except ValueError as e:
            raise BadRow(name, str(e)) from None

    name, value = checked_field(row, "answer", columns)
    if value is not _MISSING:
        answer = normalize_answer(value, name)
    elif reference is not None:  # TRL `messages`: the reference reply holds the answer
        answer = normalize_answer(reference, find_field(row, "prompt", columns)[0])
    elif "test_cases" in meta:
        answer = ""  # code: the test cases are the ground truth
    else:
        raise BadRow(name, _absent(row, "answer", columns) + " (and no test cases)")

    level = 0
    name, value = checked_field(row, "difficulty", columns)
    if value is not _MISSING:
        meta["difficulty"] = parse_difficulty(value, name)
        if meta["difficulty"].is_integer():
            level = int(meta["difficulty"])
    _, value = checked_field(row, "domain", columns)
    if value is not _MISSING:
        meta["domain"] = str(value)
    name, value = checked_field(row, "pass_rate", columns)
    if value is not _MISSING:
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise BadRow(name, f"not a number: {value!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise BadRow(name, f"must be in [0, 1], got {rate}")
        meta["pass_rate"] = rate
    extra = row.get("extra_info")
    if isinstance(extra, dict):
        why = bad_text(extra)
        if why:
            raise BadRow("extra_info", why)
        meta["extra_info"] = extra

    verifier = default_verifier
    name, value = checked_field(row, "verifier", columns)
    if value is not _MISSING:
        if not isinstance(value, str) or value not in known_verifiers:
            raise BadRow(name, f"unknown verifier {value!r} (known: {', '.join(sorted(known_verifiers))})")
        verifier = value

    _, value = checked_field(row, "id", columns)
    pid = default_id if value is _MISSING else str(value)
    return Prompt(id=pid, messages=messages, answer=answer, task=verifier, level=level, meta=meta)


def prompt_to_row(p: Prompt) -> dict[str, Any]:
    """A prompt as a row in this package's own JSONL layout, which loads back unchanged
    (used by `k15rl export-data`, `curate` and `difficulty`).

    >>> prompt_to_row(Prompt("a-1", (("user", "1+1?"),), "2", "math", meta={"domain": "arith"}))
    {'id': 'a-1', 'prompt': '1+1?', 'answer': '2', 'verifier': 'math', 'domain': 'arith'}
    """
    prompt: Any = p.messages[0][1] if len(p.messages) == 1 else [{"role": r, "content": c} for r, c in p.messages]
    row: dict[str, Any] = {"id": p.id, "prompt": prompt, "answer": p.answer, "verifier": p.task}
    if "difficulty" in p.meta:
        row["difficulty"] = p.meta["difficulty"]
    elif p.level:
        row["difficulty"] = p.level
    for key in ("domain", "test_cases", "pass_rate", "extra_info"):
        if key in p.meta:
            row[key] = p.meta[key]
    row.update(images_field(p))  # data URIs: the row stays one JSON object and loads back with its pixels
    return row
