"""Row readers for prompt-set files: JSONL, JSON, CSV/TSV, Parquet and `datasets` folders.

Every reader yields `RawRow`s: where the row is (a line number or a row index, for error
messages) and its fields as a dict, or the reason it could not be parsed at all. Readers
know nothing about columns or prompts; `k15rl.data.rows` turns rows into `Prompt`s.
`parse_jsonl` is the one JSON-lines parser: `read_rows` uses it for JSONL files, and
`read_jsonl_objects` (for the SFT and DPO data files, which stop at the first bad line)
reads through it too.

JSONL, JSON and CSV need only the standard library (also gzip-compressed: `.jsonl.gz`).
Parquet needs `pyarrow` and `datasets` folders need `datasets`; both are imported only
when such a file is read (`pip install k15rl[data]`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from k15rl.errors import UserError

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "datasets")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class RawRow:
    """One row of a file. `where` is "line 12" (text formats) or "row 12" (0-based row
    index of Parquet, JSON arrays and `datasets` folders). `data` is None when the row
    could not be parsed; `error` then says why."""

    where: str
    data: dict[str, Any] | None
    error: str | None = None


def detect_format(path: Path) -> str:
    """The format of `path`, from its suffix (a trailing `.gz` is looked through);
    a folder is a `datasets` folder written by `save_to_disk`.

    >>> detect_format(Path("a/b.jsonl.gz")), detect_format(Path("x.parquet"))
    ('jsonl', 'parquet')
    """
    if path.is_dir():
        return "datasets"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserError(f"{path}: unknown data format (known: .jsonl, .json, .csv, .tsv, .parquet, optionally .gz, "
                        "or a folder written by datasets' save_to_disk)")
    return fmt


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8", newline="")


GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # not gzip, cut short, corrupt


def not_gzip(path: str | Path, e: Exception) -> UserError:
    """The error for a `.gz` file that does not decompress, naming the file."""
    return UserError(f"{path}: not a readable gzip file ({e or type(e).__name__})")


def not_utf8(path: str | Path, e: UnicodeDecodeError) -> UserError:
    """The error for a text file that is not UTF-8, naming the file and the byte."""
    return UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")


def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 file; UserError naming the file if it cannot be read or decoded."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """Rows of a data file in order. Raises UserError if the file as a whole cannot be
    read (missing, unknown format, not a JSON array, a `DatasetDict` folder, ...)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    fmt = detect_format(path)
    try:
        if fmt == "jsonl":
            with _open_text(path) as f:
                yield from _jsonl_rows(f)
        elif fmt == "json":
            yield from _json_rows(path)
        elif fmt in ("csv", "tsv"):
            yield from _csv_rows(path, "\t" if fmt == "tsv" else ",")
        elif fmt == "parquet":
            yield from _parquet_rows(path)
        else:
            yield from _datasets_rows(path)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    except GZIP_ERRORS as e:
        raise not_gzip(path, e) from None
    except OSError as e:  # no permission, an I/O error, a file removed while read
        raise UserError(f"data file {path}: cannot be read ({e.strerror or e})") from None


# What a model's text may not hold: lone UTF-16 surrogates (JSON "\\ud800": not encodable
# as UTF-8) and control characters (Unicode category Cc) other than tab, newline and CR.
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def bad_text(value: Any) -> str | None:
    """Why `value` (a string, or lists and dicts holding strings, e.g. chat messages) is
    not usable text: its first lone surrogate or control character other than tab,
    newline and carriage return, and where; None if there is none.

    >>> bad_text("a\\tb\\n"), bad_text(["x", {"content": "ab\\x07"}])
    (None, 'control character U+0007 at character 2 (only tab, newline and carriage return are allowed)')
    >>> bad_text(json.loads('"1+\\\\ud800"'))
    'lone surrogate U+D800 at character 2 (not valid Unicode text)'
    """
    if isinstance(value, str):
        m = _BAD_CHAR.search(value)
        if m is None:
            return None
        code = ord(m.group())
        if 0xD800 <= code <= 0xDFFF:
            return f"lone surrogate U+{code:04X} at character {m.start()} (not valid Unicode text)"
        return (f"control character U+{code:04X} at character {m.start()} "
                "(only tab, newline and carriage return are allowed)")
    values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((why for why in map(bad_text, values) if why), None)


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON-lines text: its 1-based number, and the parsed value
    or, when it is not valid JSON, the parse error."""

    lineno: int
    value: Any = None
    error: json.JSONDecodeError | None = None


def parse_jsonl(lines: Iterable[str]) -> Iterator[JsonLine]:
    """The one JSON-lines parser: every non-blank line, numbered, parsed.

    >>> [(j.lineno, j.value, j.error is None) for j in parse_jsonl(['{"a": 1}', "", "[2]", "{"])]
    [(1, {'a': 1}, True), (3, [2], True), (4, None, False)]
    """
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines separate nothing and hold nothing
        try:
            yield JsonLine(n, json.loads(line))
        except json.JSONDecodeError as e:
            yield JsonLine(n, error=e)


def read_jsonl_objects(path: str | Path, fields: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSON-lines file, whatever its
    name (`.gz`: decompressed), each object holding every key of `fields`.

    The first bad line raises UserError naming the file and line: not valid JSON, not a
    JSON object, a missing field (the first of `fields` it lacks) or one whose text holds
    a lone surrogate or a control character (`bad_text`). So does a missing file or one
    that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    try:
        with _open_text(path) as f:
            for j in parse_jsonl(f):
                if j.error is not None:
                    raise UserError(f"{path}:{j.lineno}: not valid JSON ({j.error.msg})")
                if not isinstance(j.value, dict):
                    raise UserError(f"{path}:{j.lineno}: expected a JSON object")
                for key in fields:
                    if key not in j.value:
                        raise UserError(f"{path}:{j.lineno}: missing field {key!r}")
                    why = bad_text(j.value[key])
                    if why:
                        raise UserError(f"{path}:{j.lineno}: field {key!r}: {why}")
                yield j.lineno, j.value
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    except GZIP_ERRORS as e:
        raise not_gzip(path, e) from None


def _jsonl_rows(lines: Iterable[str]) -> Iterator[RawRow]:
    for j in parse_jsonl(lines):
        where = f"line {j.lineno}"
        if j.error is not None:
            yield RawRow(where, None, f"invalid JSON ({j.error.msg} at column {j.error.colno})")
        elif not isinstance(j.value, dict):
            yield RawRow(where, None, f"expected a JSON object, got {type(j.value).__name__}")
        else:
            yield RawRow(where, j.value)


def _json_rows(path: Path) -> Iterator[RawRow]:
    """A JSON array of objects, or an object holding one such array (e.g. {"data": [...]}).
    A `.json` file that is really JSON lines (as `Dataset.to_json` writes) is read as such."""
    with _open_text(path) as f:
        text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line
            yield from _jsonl_rows(io.StringIO(text))
            return
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON array of rows, or an object with exactly one array "
                            f"(found arrays under: {', '.join(lists) or 'none'})")
        obj = obj[lists[0]]
    if not isinstance(obj, list):
        raise UserError(f"{path}: expected a JSON array of rows, got {type(obj).__name__}")
    for i, row in enumerate(obj):
        if isinstance(row, dict):
            yield RawRow(f"row {i}", row)
        else:
            yield RawRow(f"row {i}", None, f"expected a JSON object, got {type(row).__name__}")


def _csv_rows(path: Path, delimiter: str) -> Iterator[RawRow]:
    """CSV with a header line. Empty cells count as missing fields; line numbers are
    those of the file (the header is line 1)."""
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            return
        header = [h for h in reader.fieldnames if h is not None]
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise UserError(f"{path}: the header repeats column(s) {', '.join(dup)}")
        try:
            for row in reader:
                where = f"line {reader.line_num}"
                if None in row:  # DictReader puts surplus cells under the key None
                    yield RawRow(where, None, f"{len(header) + len(row[None])} cells, the header has {len(header)}")
                    continue
                yield RawRow(where, {k: v for k, v in row.items() if v not in (None, "")})
        except csv.Error as e:
            raise UserError(f"{path}: line {reader.line_num}: invalid CSV ({e})") from None


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install 'k15rl[data]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and OSError subclasses
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield RawRow(f"row {i}", row)
            i += 1


def _datasets_rows(path: Path) -> Iterator[RawRow]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{path}: reading a datasets folder needs datasets: pip install 'k15rl[data]'") from None
    if not any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise UserError(f"{path}: a folder, but not one written by datasets' save_to_disk")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        splits = ", ".join(ds)
        raise UserError(f"{path}: holds several splits ({splits}); name one split's folder, e.g. {path / next(iter(ds))}")
    i = 0
    for batch in ds.iter(batch_size=1024):
        cols = list(batch)
        for values in zip(*(batch[c] for c in cols)):
            yield RawRow(f"row {i}", dict(zip(cols, values)))
            i += 1
