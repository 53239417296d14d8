"""Loggers beside metrics.jsonl and eval.jsonl: TensorBoard and Weights & Biases (docs/logging.md).

The loop writes every row through `run.metrics_log.write(row)` and `run.eval_log.write(row)`.
`open_run` makes each a `TeeLog`: the JSON-lines file (the record: resume truncates it,
`lines` counts it) and, after it, every `MetricSink` the config asks for. A sink sees the
same rows and turns them into scalars at step = iteration:

    metrics row  {"iteration": 3, "reward/accuracy": 0.5, ...}  -> reward/accuracy @ 3, ...
    eval row     {"iteration": 6, "temperature": 1.0, "accuracy": 0.4, "per_level": {"1": {...}}}
                 -> eval/accuracy @ 6, eval/level_1/accuracy @ 6, ... (greedy rows: eval_greedy/...)

Both packages are optional extras, imported only when the config enables them
(`check_installed`, called before the output folder is touched, says which one is missing).
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import yaml

from k15rl.config import LogConfig, TrainConfig, to_dict
from k15rl.errors import UserError

LOGGER_FILES = ("tensorboard", "wandb", "wandb_id")  # in OUT, removed when a run starts over


class RowLog(Protocol):
    """What the loop writes its rows to (`Run.metrics_log`, `Run.eval_log`): a JsonlLog or a TeeLog."""

    lines: int

    def write(self, row: dict) -> None: ...

    def close(self) -> None: ...


class MetricSink(Protocol):
    """A logger beside the JSON-lines files: it sees every metrics and evaluation row."""

    def write_metrics(self, row: dict) -> None: ...

    def write_eval(self, row: dict) -> None: ...

    def close(self) -> None: ...


class TeeLog:
    """A JsonlLog whose rows also go to `sinks` (`kind`: which of their methods), after the
    file: the file stays the record (`lines`, resume truncation), the sinks are views."""

    def __init__(self, log: RowLog, sinks: list[MetricSink], kind: Literal["metrics", "eval"]):
        self.log, self.sinks, self.kind = log, sinks, kind

    @property
    def lines(self) -> int:
        return self.log.lines

    def write(self, row: dict) -> None:
        self.log.write(row)
        for sink in self.sinks:
            (sink.write_metrics if self.kind == "metrics" else sink.write_eval)(row)

    def close(self) -> None:  # the sinks are closed by `open_sinks`: both logs share them
        self.log.close()

    def __enter__(self) -> "TeeLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metric_scalars(row: dict) -> dict[str, float]:
    """The numeric values of a metrics.jsonl row by key (namespaced keys as they are); the
    iteration is the step, not a scalar.

    >>> metric_scalars({"iteration": 2, "reward/mean": 0.5, "train/steps": 1, "note": "x"})
    {'reward/mean': 0.5, 'train/steps': 1.0}
    """
    return {k: float(v) for k, v in row.items() if k != "iteration" and _numeric(v)}


def eval_scalars(row: dict, eval_temperature: float) -> dict[str, float]:
    """An eval.jsonl row as scalars: `eval/...` at eval.temperature, `eval_greedy/...` for the
    greedy rows that join a sampled evaluation at the start and the end; per level
    `eval/level_N/...`; the evaluation's seconds as `eval/seconds`.

    >>> row = {"iteration": 6, "temperature": 0.0, "accuracy": 0.5, "n": 4, "time/eval": 2.0,
    ...        "per_level": {"1": {"accuracy": 1.0, "n": 2}}}
    >>> eval_scalars(row, eval_temperature=1.0)
    {'eval_greedy/accuracy': 0.5, 'eval_greedy/n': 4.0, 'eval_greedy/seconds': 2.0, 'eval_greedy/level_1/accuracy': 1.0, 'eval_greedy/level_1/n': 2.0}
    >>> list(eval_scalars(row, eval_temperature=0.0))[:1]
    ['eval/accuracy']
    """
    prefix = "eval_greedy" if row["temperature"] == 0 and eval_temperature > 0 else "eval"
    out = {f"{prefix}/{'seconds' if k == 'time/eval' else k}": float(v) for k, v in row.items()
           if k not in ("iteration", "temperature") and _numeric(v)}
    for level, block in row.get("per_level", {}).items():
        out.update({f"{prefix}/level_{level}/{k}": float(v) for k, v in block.items() if _numeric(v)})
    return out


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _require(module: str, key: str, extra: str) -> Any:
    """Import an optional logger's package, or a one-line UserError naming the key and the install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"config key {key}=true needs the {module} package: pip install 'k15rl[{extra}]' "
                        f"(or set {key}=false)") from None


def check_installed(cfg: LogConfig) -> None:
    """The packages the enabled loggers need are importable (called before OUT is touched)."""
    if cfg.tensorboard:
        _require("tensorboard", "log.tensorboard", "tensorboard")
    if cfg.wandb:
        _require("wandb", "log.wandb", "wandb")


class TensorBoardSink:
    """Event files under OUT/tensorboard. A resumed run appends a new event file whose
    `purge_step` hides what the crashed run logged after its checkpoint, so each step has
    the values of metrics.jsonl once. The config, as YAML, is a text summary at the step the
    run (or the resumed run) starts from."""

    def __init__(self, cfg: TrainConfig, out: Path, start: int, resumed: bool):
        _require("tensorboard", "log.tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.eval_temperature = cfg.eval.temperature
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if resumed else None)
        config = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        self.writer.add_text("config", f"```yaml\n{config}```", global_step=start)
        self.writer.flush()

    def _scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # one flush per row: a live TensorBoard sees each iteration

    def write_metrics(self, row: dict) -> None:
        self._scalars(metric_scalars(row), row["iteration"])

    def write_eval(self, row: dict) -> None:
        self._scalars(eval_scalars(row, self.eval_temperature), row["iteration"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in OUT/wandb (offline by default: `wandb sync OUT/wandb/offline-run-*` uploads
    it later). Rows are logged with their iteration as the x-axis (`define_metric`), so the
    rows a resumed run logs again after its checkpoint need no increasing wandb step. The
    run's id is kept in OUT/wandb_id: a resumed run continues it (`resume="allow"`)."""

    def __init__(self, cfg: TrainConfig, out: Path, resumed: bool):
        wandb = _require("wandb", "log.wandb", "wandb")
        self.eval_temperature = cfg.eval.temperature
        id_file = out / "wandb_id"
        run_id = id_file.read_text().strip() if resumed and id_file.is_file() else uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
        (out / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(
            project=cfg.log.wandb_project, name=cfg.log.wandb_run_name or Path(cfg.out).resolve().name,
            dir=str(out), config=to_dict(cfg), id=run_id, resume="allow", mode=cfg.log.wandb_mode,
        )
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def write_metrics(self, row: dict) -> None:
        self.run.log({"iteration": row["iteration"], **metric_scalars(row)})

    def write_eval(self, row: dict) -> None:
        self.run.log({"iteration": row["iteration"], **eval_scalars(row, self.eval_temperature)})

    def close(self) -> None:
        self.run.finish()


@contextmanager
def open_sinks(cfg: TrainConfig, out: Path, resumed_at: int | None) -> Iterator[list[MetricSink]]:
    """The loggers `cfg.log` enables, closed when the block ends. `resumed_at`: the iteration of
    the checkpoint a resumed run starts from; None: the run starts over, and what earlier
    loggers left in OUT (LOGGER_FILES) is removed first."""
    if resumed_at is None:
        for name in LOGGER_FILES:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    sinks: list[MetricSink] = []
    try:
        if cfg.log.tensorboard:
            sinks.append(TensorBoardSink(cfg, out, resumed_at or 0, resumed=resumed_at is not None))
        if cfg.log.wandb:
            sinks.append(WandbSink(cfg, out, resumed=resumed_at is not None))
        yield sinks
    finally:
        for sink in reversed(sinks):
            sink.close()
