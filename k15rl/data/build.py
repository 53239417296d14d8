"""Train and test prompt sets from built-in tasks and data files (report §2.1).

`load_file` reads one file with the column mapping of `DataConfig` and applies the
bad-row policy; `build_prompt_sets` mixes built-in tasks and files, holds out a test
share where asked, removes duplicate prompts (and train prompts that are also test
prompts) and reports every count. `fit_context` drops prompts that do not fit the
model's context once the tokenizer is known.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from k15rl.config import DataConfig, TrainConfig
from k15rl.data.readers import RawRow, detect_format, read_rows
from k15rl.data.rows import BadRow, row_to_prompt
from k15rl.errors import UserError
from k15rl.models.loading import model_positions
from k15rl.models.vision import image_key
from k15rl.types import Prompt

Log = Callable[[str], None]
_WS = re.compile(r"\s+")


@dataclass
class FileReport:
    """What loading one file did: rows read, prompts kept, bad rows skipped."""

    path: str
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    first_skipped: str | None = None  # the first skipped row's message

    def line(self) -> str:
        s = f"data: {self.path}: {self.rows} rows, {self.kept} prompts"
        if self.skipped:
            s += f", {self.skipped} bad rows skipped (first: {self.first_skipped})"
        return s


@dataclass
class DataReport:
    """Counts of everything `build_prompt_sets` removed, so none of it is silent."""

    files: list[FileReport] = field(default_factory=list)
    duplicates: int = 0  # repeated prompts removed (first kept), within train and within test
    conflicting: int = 0  # of those, repeats whose answer differed from the first
    overlap: int = 0  # train prompts removed because the test set holds them
    too_long: int = 0  # prompts removed by fit_context

    @property
    def skipped(self) -> int:
        return sum(f.skipped for f in self.files)


@dataclass
class PromptSets:
    train: list[Prompt]
    test: list[Prompt]
    report: DataReport


def known_verifiers() -> frozenset[str]:
    from k15rl.rewards.lookup import verifier_names

    return verifier_names()


def load_file(path: str | Path, data: DataConfig, log: Log = print) -> tuple[list[Prompt], FileReport]:
    """Prompts of one data file. A bad row raises UserError naming the file, the line
    or row index, and the field (data.on_bad_row=error), or is skipped and counted
    (data.on_bad_row=skip). A file without rows, or without any good row, is an error."""
    path = Path(path)
    fmt = detect_format(path) if path.exists() else None
    return load_rows(read_rows(path), str(path), path.stem, data, log, chat_in_text=fmt in ("csv", "tsv"),
                     base_dir=path.parent)


def memory_rows(dataset: Any) -> Iterator[RawRow]:
    """The rows of an in-memory dataset (a list of dicts, or a `datasets.Dataset`), as
    a file's rows are read: "row i", 0-based; a row that is not a mapping is bad."""
    for i, row in enumerate(dataset):
        if isinstance(row, Mapping):
            yield RawRow(f"row {i}", dict(row))
        else:
            yield RawRow(f"row {i}", None, f"expected a mapping of fields, got {type(row).__name__}")


def load_rows(rows: Iterable[RawRow], name: str, stem: str, data: DataConfig, log: Log = print,
              chat_in_text: bool = False, base_dir: Path | None = None) -> tuple[list[Prompt], FileReport]:
    """Prompts of the rows of one file or in-memory dataset called `name` (see load_file);
    image paths in the rows are relative to `base_dir` (the file's folder; else as given)."""
    report = FileReport(name)
    configured = {k: v for k, v in dataclasses.asdict(data.columns).items() if v is not None}
    verifiers = known_verifiers()
    prompts: list[Prompt] = []
    for raw in rows:
        report.rows += 1
        try:
            if raw.data is None:
                raise BadRow("-", raw.error or "unreadable")
            prompts.append(row_to_prompt(
                raw.data, configured, default_id=f"{stem}-{report.rows - 1}", default_verifier=data.verifier,
                known_verifiers=verifiers, source=f"{name} {raw.where}", system_prompt=data.system_prompt,
                chat_in_text=chat_in_text, base_dir=base_dir,
            ))
        except BadRow as e:
            where = f"{name}, {raw.where}" + ("" if raw.data is None else f", field {e.field!r}")
            msg = f"{where}: {e.why}"
            if data.on_bad_row == "error":
                raise UserError(f"{msg} (data.on_bad_row=skip skips bad rows)") from None
            report.skipped += 1
            report.first_skipped = report.first_skipped or msg
    report.kept = len(prompts)
    if report.rows == 0:
        raise UserError(f"{name}: no rows (empty dataset)")
    if not prompts:
        raise UserError(f"{name}: all {report.rows} rows are bad (first: {report.first_skipped})")
    log(report.line())
    return prompts, report


def load_files(paths: Sequence[str], data: DataConfig, log: Log = print) -> tuple[list[Prompt], list[FileReport]]:
    prompts: list[Prompt] = []
    reports = []
    for p in paths:
        ps, rep = load_file(p, data, log)
        prompts += ps
        reports.append(rep)
    return prompts, reports


def prompt_key(p: Prompt) -> str:
    """What makes two prompts the same: their messages, whitespace collapsed, case kept,
    and their images (by content)."""
    text = "\x00".join(r + "\x01" + _WS.sub(" ", c).strip() for r, c in p.messages)
    return text + "".join("\x02" + image_key(png) for png in p.images)


def dedupe(prompts: Sequence[Prompt]) -> tuple[list[Prompt], int, int, str | None]:
    """First occurrence of each prompt; returns (kept, removed, removed with a different
    answer, an example message)."""
    first: dict[str, Prompt] = {}
    removed = conflicting = 0
    example = None
    for p in prompts:
        k = prompt_key(p)
        if k in first:
            removed += 1
            conflicting += first[k].answer != p.answer
            example = example or f"{p.meta.get('source', p.id)} repeats {first[k].meta.get('source', first[k].id)}"
        else:
            first[k] = p
    return list(first.values()), removed, conflicting, example


def unique_ids(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Samplers key statistics by id: a repeated id gets a suffix (#2, #3, ...)."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        n = seen.get(p.id, 0) + 1
        seen[p.id] = n
        out.append(p if n == 1 else dataclasses.replace(p, id=f"{p.id}#{n}"))
    return out


def in_test_share(p: Prompt, fraction: float) -> bool:
    """Whether a file prompt falls in the held-out share: a hash of its text, so the
    split does not depend on order, seed or which other prompts are loaded."""
    h = int.from_bytes(hashlib.sha256(prompt_key(p).encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def few_shot_turns(task, n: int, level: int, seed: int) -> tuple[tuple[str, str], ...]:
    """`n` worked examples of `task` as (user, assistant) turns: problems of the train
    split at `level` and the task's own worked solution (its warm-up trace). An instruct
    model follows the answer format from them (k15rl/tasks/rg.py for real models)."""
    from k15rl.tasks import Problem, make_prompts

    rng = random.Random(f"few-shot/{task.name}/{seed}")
    turns: tuple[tuple[str, str], ...] = ()
    for p in make_prompts(task, "train", n, (level,), seed + 7919) if n > 0 else []:
        turns += (("user", p.question), ("assistant", task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta),
                                                                        rng)))
    return turns


def builtin_task_names(data: DataConfig, other_data: bool = False) -> list[str]:
    """data.tasks; unset: [sort] when no files (or in-memory data) are given, none when they are."""
    return data.tasks if data.tasks is not None else ([] if data.train_files or other_data else ["sort"])


def builtin_prompts(data: DataConfig, other_data: bool = False,
                    exclude: frozenset[str] = frozenset()) -> tuple[list[Prompt], list[Prompt]]:
    """Train and test prompts of the built-in tasks (disjoint splits by construction); no
    train prompt's `problem_key` is in `exclude`."""
    from k15rl.tasks import TooFewProblems, get_task, make_prompts

    tasks = builtin_task_names(data, other_data)
    if tasks:  # levels of which no task has one would give no prompts in silence (tasks differ in their levels)
        known = {lv for name in tasks for lv in get_task(name).levels}
        for key, levels in (("data.train_levels", data.train_levels), ("data.test_levels", data.test_levels)):
            if levels and not known & set(levels):
                raise UserError(f"config key {key}: no task of data.tasks ({', '.join(tasks)}) has any of the "
                                f"levels {levels} (their levels: {', '.join(map(str, sorted(known)))})")
    train: list[Prompt] = []
    test: list[Prompt] = []
    for name in tasks:
        task = get_task(name)
        try:
            tr_levels = tuple(lv for lv in data.train_levels if lv in task.levels)
            te_levels = tuple(lv for lv in data.test_levels if lv in task.levels)
            task_train = make_prompts(task, "train", data.train_per_level, tr_levels, data.seed, exclude)
            task_test = make_prompts(task, "test", data.test_per_level, te_levels, data.seed)
            shots = few_shot_turns(task, data.few_shot, min(tr_levels or task.levels), data.seed)
        except ValueError as e:
            hint = (": the excluded ones are the built-in model's warm-up prompts (data.exclude_warmup); lower "
                    "data.train_per_level" if isinstance(e, TooFewProblems) and e.excluded else "")
            raise UserError(f"config key data: {e}{hint}") from None
        train += [dataclasses.replace(p, messages=shots + p.messages) for p in task_train]
        test += [dataclasses.replace(p, messages=shots + p.messages) for p in task_test]
    if data.system_prompt:
        system = (("system", data.system_prompt),)
        train, test = ([dataclasses.replace(p, messages=system + p.messages) for p in ps] for ps in (train, test))
    return train, test


def build_prompt_sets(data: DataConfig, log: Log = print, train_dataset: Any = None,
                      eval_dataset: Any = None, exclude: frozenset[str] = frozenset(),
                      need_train: bool = True) -> PromptSets:
    """Train and test prompts: built-in tasks plus files plus in-memory datasets (lists of
    row dicts or `datasets.Dataset`s, read like a file's rows), deduplicated, reported.
    `exclude`: keys (`problem_key`) of problems the built-in tasks' train prompts leave out."""
    report = DataReport()
    if data.test_fraction and not data.train_files and train_dataset is None:
        raise UserError(f"config key data.test_fraction: {data.test_fraction} holds out a share of data.train_files, "
                        "and there are none (the built-in tasks' test split is data.test_levels/test_per_level)")
    for key in ("train_files", "test_files"):  # before any is read: the key may come from a preset
        missing = [f for f in getattr(data, key) or () if not Path(f).exists()]
        if missing:
            raise UserError(f"config key data.{key}: {missing[0]} does not exist")
    train, test = builtin_prompts(data, other_data=train_dataset is not None, exclude=exclude)
    if train_dataset is not None:  # held out by data.test_fraction, as file prompts, unless eval_dataset is given
        prompts, rep = load_rows(memory_rows(train_dataset), "train_dataset", "train_dataset", data, log)
        report.files.append(rep)
        share = 0.0 if eval_dataset is not None else data.test_fraction
        train += [p for p in prompts if not in_test_share(p, share)]
        test += [p for p in prompts if in_test_share(p, share)]
    if eval_dataset is not None:
        prompts, rep = load_rows(memory_rows(eval_dataset), "eval_dataset", "eval_dataset", data, log)
        report.files.append(rep)
        test += prompts
    if data.train_files:
        file_train, reps = load_files(data.train_files, data, log)
        report.files += reps
        if data.test_files:
            file_test, reps = load_files(data.test_files, data, log)
            report.files += reps
        else:
            file_test = [p for p in file_train if in_test_share(p, data.test_fraction)]
            file_train = [p for p in file_train if not in_test_share(p, data.test_fraction)]
        train, test = train + file_train, test + file_test
    elif data.test_files:
        file_test, reps = load_files(data.test_files, data, log)
        report.files += reps
        test += file_test
    train, d1, c1, ex1 = dedupe(train)
    test, d2, c2, ex2 = dedupe(test)
    report.duplicates, report.conflicting = d1 + d2, c1 + c2
    if report.duplicates:
        log(f"data: {report.duplicates} duplicate prompts removed, the first of each kept "
            f"({report.conflicting} with a different answer; e.g. {ex1 or ex2})")
    test_keys = {prompt_key(p) for p in test}
    n = len(train)
    train = [p for p in train if prompt_key(p) not in test_keys]
    report.overlap = n - len(train)
    if report.overlap:
        log(f"data: {report.overlap} train prompts removed because the test set holds them")
    if not train and need_train:
        raise UserError("config key data: no training prompts (check data.tasks, data.train_files, data.train_levels)")
    return PromptSets(unique_ids(train), unique_ids(test), report)


def build_prompts(cfg: TrainConfig, log: Log = print, train_dataset: Any = None,
                  eval_dataset: Any = None, need_train: bool = True) -> tuple[list[Prompt], list[Prompt]]:
    """Train and held-out test prompts of a run: `build_prompt_sets(cfg.data, ...)`, the
    train prompts without the warm-up prompts of the built-in model `data.exclude_warmup`
    names (`warmup_keys`)."""
    exclude = warmup_keys(cfg, other_data=train_dataset is not None, log=log)
    if exclude:
        log(f"data: the built-in tasks' train prompts leave out the {len(exclude)} prompts of the built-in "
            "model's warm-up (data.exclude_warmup)")
    sets = build_prompt_sets(cfg.data, log, train_dataset, eval_dataset, exclude=exclude, need_train=need_train)
    return sets.train, sets.test


def warmup_keys(cfg: TrainConfig, other_data: bool = False, log: Log = print) -> frozenset[str]:
    """Keys (`problem_key`) of the prompts the warm-up of the built-in model that
    `data.exclude_warmup` names fitted (report §2.2): "auto" = model.path's if it is a
    built-in model, "none" = nothing, else a `BUILTIN_SPECS` name. Empty when no task of
    that model is among the run's built-in tasks (`builtin_task_names`; `other_data`:
    in-memory rows are given, so an unset data.tasks means none), and, with a warning,
    when model.path is a built-in model folder whose name no current spec makes (built
    by an older version, whose tasks drew other problems)."""
    from k15rl.models.builtin import BUILTIN_SPECS, SPEC_FILE, builtin_name

    choice = cfg.data.exclude_warmup
    if choice == "none":
        return frozenset()
    if choice != "auto" and choice not in BUILTIN_SPECS:
        raise UserError(f"config key data.exclude_warmup: {choice!r} is not auto, none or a built-in model "
                        f"({', '.join(sorted(BUILTIN_SPECS))})")
    name = builtin_name(cfg.model.path) if choice == "auto" else choice
    if name is None and (Path(cfg.model.path).expanduser() / SPEC_FILE).is_file():
        log(f"data: {cfg.model.path} is a built-in model that this version would not build (its tasks drew "
            "other problems then): its warm-up problems are not known and not left out of the train prompts "
            "(data.exclude_warmup=auto)")
    if name is None or not set(BUILTIN_SPECS[name].tasks) & set(builtin_task_names(cfg.data, other_data)):
        return frozenset()
    return _warmup_keys(name)


@functools.lru_cache(maxsize=None)
def _warmup_keys(name: str) -> frozenset[str]:
    """`warmup_keys` of a built-in model, drawn (and, for a VLM, rendered) once per process."""
    from k15rl.models.builtin import BUILTIN_SPECS, warmup_prompts
    from k15rl.tasks import problem_key

    return frozenset(problem_key(p) for p in warmup_prompts(BUILTIN_SPECS[name]))


def prompt_token_limit(cfg: TrainConfig, model_config, evaluation: bool = False) -> int | None:
    """The most prompt tokens a run allows: data.max_prompt_tokens if set, else the
    model's context (max_position_embeddings) minus the response's budget; None if the
    model states no context length. The budget is rollout.max_new_tokens, or for prompts
    that are evaluated (`evaluation`) eval.max_new_tokens where set."""
    ctx = model_positions(model_config)
    key, new = "rollout.max_new_tokens", cfg.rollout.max_new_tokens
    if evaluation and cfg.eval.max_new_tokens:
        key, new = "eval.max_new_tokens", cfg.eval.max_new_tokens
    if cfg.data.max_prompt_tokens:
        if ctx is not None and cfg.data.max_prompt_tokens + new > ctx:
            raise UserError(f"config key data.max_prompt_tokens: {cfg.data.max_prompt_tokens} prompt tokens plus "
                            f"{key}={new} exceed the model's context of {ctx} positions")
        return cfg.data.max_prompt_tokens
    if ctx is not None and ctx - new < 1:
        raise UserError(f"config key {key}: {new} leaves no room for a prompt in the model's context of {ctx} "
                        "positions")
    return None if ctx is None else ctx - new


def fit_context(prompts: Sequence[Prompt], tokenizer, limit: int | None, name: str = "train",
                log: Log = print) -> tuple[list[Prompt], int]:
    """Prompts whose chat-rendered token count is at most `limit`; the others are
    dropped and their number logged. None: no limit."""
    from k15rl.models.loading import encode_prompt

    if limit is None or not prompts:
        return list(prompts), 0
    kept, longest = [], None
    for p in prompts:
        try:
            n = len(encode_prompt(tokenizer, p.messages, p.images))
        except UserError as e:  # e.g. images for a text-only model: name the row they come from
            raise UserError(f"{p.meta.get('source', p.id)}, field 'images': {e}") from None
        if n <= limit:
            kept.append(p)
        elif longest is None or n > longest[0]:
            longest = (n, p.meta.get("source", p.id))
    dropped = len(prompts) - len(kept)
    if dropped:
        log(f"data: {dropped} {name} prompts longer than {limit} tokens removed (longest: {longest[0]} tokens, "
            f"{longest[1]})")
    if not kept:
        raise UserError(f"every {name} prompt is longer than {limit} tokens (the model's context minus the "
                        "response's budget, rollout.max_new_tokens or for evaluated prompts eval.max_new_tokens; or "
                        "data.max_prompt_tokens)")
    return kept, dropped
