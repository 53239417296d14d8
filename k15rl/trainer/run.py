"""A run's set-up and the state its loop carries (k15rl/trainer/loop.py reads it).

`open_run` does everything before the first iteration, in an order that keeps the
output folder untouched until every input has been checked: prompts, the model (or the
newest checkpoint when resuming), the sampler, the output folder, the reward router,
the update plan, the workers (placement), the logs, and the state of a resumed run. It
returns a `Run`; leaving its `with` block stops the workers and closes the logs.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml

from k15rl.config import SamplerConfig, TrainConfig, to_dict
from k15rl.data import build_prompts, fit_context, prompt_token_limit
from k15rl.distributed.placement import Workers, start_workers
from k15rl.errors import UserError
from k15rl.malloc import return_freed_memory
from k15rl.models import lora
from k15rl.models.loading import load_model, load_tokenizer, stop_token_ids
from k15rl.paths import check_output_path
from k15rl.rewards.compose import RewardFn, RewardRouter
from k15rl.rollout.collect import OUTCOMES, PartialRolloutResult
from k15rl.rollout.engine import SamplingParams
from k15rl.rollout.factory import context_length
from k15rl.rollout.replay import ReplayBuffer
from k15rl.sampling import Sampler, make_sampler, sampler_options
from k15rl.trainer.checkpoint import (CHECKPOINTS, OPTIMIZER, JsonlLog, latest_checkpoint, read_jsonl, rng_state,
                                     set_rng_state, truncate_jsonl)
from k15rl.trainer.evaluate import eval_sampling_params
from k15rl.trainer.loggers import LOGGER_FILES, RowLog, TeeLog, check_installed, open_sinks
from k15rl.trainer.resolve import check_names, resolve_model_path, router_from_config
from k15rl.trainer.update import update_plan
from k15rl.types import Prompt, Trajectory

RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json", "final", CHECKPOINTS, "curves.png",
             *LOGGER_FILES, "eval_responses")


RESPONSES_NAME = re.compile(r"iter(\d+)_T(.+)\.jsonl")  # iter<N>_T<temperature>.jsonl


def responses_path(out: Path, iteration: int, temperature: float) -> Path:
    """Where `eval.save_responses` writes the responses of the evaluation at `iteration`
    (a name `RESPONSES_NAME` matches)."""
    return out / "eval_responses" / f"iter{iteration}_T{temperature:g}.jsonl"


@dataclass
class Progress:
    """The loop's counters; with the sampler, the replay buffer and the RNG states, what a
    resumed run needs besides the weights."""

    iteration: int = 0  # iterations done
    next_group: int = 0  # group id of the next new prompt
    train_seconds: float = 0.0  # time spent in iterations (evaluations excluded)
    consecutive_skips: int = 0  # optimizer steps in a row skipped for a non-finite loss or gradient


@dataclass
class Run:
    """Everything one run's loop works with, built by `open_run`."""

    cfg: TrainConfig
    out: Path
    tokenizer: Any
    train_prompts: list[Prompt]
    test_prompts: list[Prompt]
    sampler: Sampler
    buffer: ReplayBuffer
    router: RewardRouter  # the reward function of each data source, with time limits
    workers: Workers  # the rollout engine and the trainer, wherever they are placed
    stop_token_ids: list[int]
    eval_params: SamplingParams
    metrics_log: RowLog  # metrics.jsonl and the loggers of cfg.log (k15rl/trainer/loggers.py)
    eval_log: RowLog  # eval.jsonl, the same
    progress: Progress = field(default_factory=Progress)
    evals: list[dict] = field(default_factory=list)  # rows of eval.jsonl at eval.temperature
    greedy_evals: list[dict] = field(default_factory=list)  # greedy rows (start and end), if eval.temperature > 0
    resumed_from: Path | None = None
    background: ThreadPoolExecutor | None = None  # rollout.overlap: the rollout running ahead
    started: float = field(default_factory=time.time)

    @property
    def greedy_params(self) -> SamplingParams | None:
        """Sampled accuracy can rise while greedy accuracy does not: a sampled evaluation is
        joined by a greedy one at the start and the end, so both are on record."""
        if self.test_prompts and self.cfg.eval.temperature > 0:
            return dataclasses.replace(self.eval_params, temperature=0.0)
        return None

    def state_dict(self) -> dict:
        """What a resumed run needs besides the weights (a checkpoint's state.json)."""
        p = self.progress
        return {
            "iteration": p.iteration, "next_group": p.next_group, "train_seconds": p.train_seconds,
            "consecutive_skips": p.consecutive_skips, "sampler": self.sampler.state_dict(),
            "replay_buffer": self.buffer.state_dict(), "rng": rng_state(),
            "metrics_lines": self.metrics_log.lines, "eval_lines": self.eval_log.lines, "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: everything the next iteration depends on, as it was."""
        self.sampler.load_state_dict(state["sampler"])
        self.buffer.load_state_dict(state["replay_buffer"])
        self.progress = Progress(state["iteration"], state["next_group"], state["train_seconds"],
                                 state["consecutive_skips"])
        set_rng_state(state["rng"])
        logged = read_jsonl(self.out / "eval.jsonl")
        self.evals = [e for e in logged if e["temperature"] == self.cfg.eval.temperature]
        self.greedy_evals = [e for e in logged if e["temperature"] == 0.0] if self.greedy_params else []


# what Run.state_dict writes and load_state_dict reads (a checkpoint's state.json)
STATE_KEYS = ("iteration", "next_group", "train_seconds", "consecutive_skips", "sampler", "replay_buffer", "rng",
              "metrics_lines", "eval_lines")


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's state.json. One that does not parse, or lacks a key the resumed run
    needs, was damaged after it was written (checkpoints are written whole or not at all):
    a UserError naming the file, rather than a run that restarts or guesses."""
    path = checkpoint / "state.json"
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({getattr(e, 'msg', e)}): the checkpoint is damaged; move "
                        f"{checkpoint} aside to resume from the one before it") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else ["iteration"]
    if missing:
        raise UserError(f"{path}: no {missing[0]!r}: the checkpoint is damaged; move {checkpoint} aside to resume "
                        f"from the one before it")
    return state


def holds_run(out: Path) -> bool:
    return out.exists() and any((out / f).exists() for f in RUN_FILES)


def foreign_config(out: Path) -> bool:
    """OUT holds a config.yaml that no run wrote (a run's holds every section of the
    config, `out` among them) and nothing else of a run: the user's own file, which a run
    would replace (and --overwrite delete)."""
    path = out / "config.yaml"
    if not path.is_file() or any((out / f).exists() for f in RUN_FILES if f != "config.yaml"):
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return True
    return not (isinstance(data, dict) and {"out", "model", "data", "rollout", "algorithm"} <= set(data))


def prepare_out(out: Path, cfg: TrainConfig, overwrite: bool, resuming: bool = False) -> None:
    """Create the run folder. A folder that already holds a run is refused unless
    `overwrite` (then only the run's own files are removed) or `resuming` (kept)."""
    if holds_run(out) and not resuming:
        if not overwrite:
            raise UserError(f"output folder {out} already holds a run: pass --resume {out} to continue it, "
                            f"--overwrite to replace it, or choose another out=")
        for f in RUN_FILES:
            p = out / f
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def open_run(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False, log: Callable[[str], None] = print,
             reward_fn: RewardFn | None = None, train_dataset: Any = None, eval_dataset: Any = None) -> Iterator[Run]:
    """Set a run up as configured (see the module docstring); `resume`: continue the run in
    `cfg.out` from its newest complete checkpoint, or start it over if there is none.

    From Python (`k15rl.train`): `reward_fn` scores every data source without a
    reward.sources entry; `train_dataset` / `eval_dataset` are in-memory rows read like a
    data file's (a resumed run needs them passed again: only the config is saved)."""
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return_freed_memory()  # resident memory stays near what a step uses (k15rl/malloc.py)
    seed_everything(cfg.seed)
    # Everything that can fail on bad input happens before OUT is touched.
    check_output_path(out, "out")
    check_names(cfg)
    check_installed(cfg.log)  # TensorBoard, W&B: optional packages
    if cfg.model.lora.rank:
        lora.check_installed()  # peft
    train_prompts, test_prompts = build_prompts(cfg, log, train_dataset, eval_dataset)
    if resume and not (out / "config.yaml").is_file():
        raise UserError(f"--resume {out}: no run to resume there (no config.yaml)")
    if foreign_config(out):
        raise UserError(f"out {out}: holds a config.yaml that no run wrote, which the run would replace with its "
                        f"own: choose another out=")
    if not (resume or overwrite) and holds_run(out):
        raise UserError(f"output folder {out} already holds a run: pass --resume {out} to continue it, "
                        f"--overwrite to replace it, or choose another out=")
    checkpoint = latest_checkpoint(out) if resume else None
    state = read_state(checkpoint) if checkpoint else None
    if state is not None:  # the logs' rows up to the checkpoint, which the resumed run keeps, must read
        read_jsonl(out / "metrics.jsonl", limit=state["metrics_lines"])
        read_jsonl(out / "eval.jsonl", limit=state["eval_lines"])
    if state is not None and state["iteration"] > cfg.iterations:
        raise UserError(f"config key iterations={cfg.iterations}: the run in {out} is already at iteration "
                        f"{state['iteration']} ({checkpoint.name}); give at least that many")
    if resume and not checkpoint:
        log(f"{out}: no complete checkpoint yet, starting the run over from iteration 0")
    if ignored := cfg.ignored_ray_settings():
        log(f"distributed.backend=local: {', '.join(ignored)} apply to Ray runs only and are ignored")
    path = checkpoint or resolve_model_path(cfg.model.path, "model.path", log)
    # LoRA: a checkpoint holds the merged weights (the engine's) and the adapter; the trainer
    # goes on training that adapter on the frozen base model (k15rl/models/lora.py)
    lora_resume = (lora.resume_from(checkpoint, resolve_model_path(cfg.model.path, "model.path", log))
                   if checkpoint and cfg.model.lora.rank else None)
    tokenizer = load_tokenizer(path, cfg.model.chat_template)
    model = load_model(path, cfg.model.dtype)
    # prompts must leave room for the response (a test prompt for the evaluation's)
    limit = prompt_token_limit(cfg, model.config)
    train_prompts, _ = fit_context(train_prompts, tokenizer, limit, "train", log)
    if test_prompts:  # the evaluation's budget counts only where there is an evaluation
        test_prompts, _ = fit_context(test_prompts, tokenizer, prompt_token_limit(cfg, model.config, evaluation=True),
                                      "test", log)
    try:
        options = {k: v for k, v in to_dict(cfg.sampler).items() if k != "name"}
        defaults, taken = to_dict(SamplerConfig()), sampler_options(cfg.sampler.name)
        if ignored := [f"sampler.{k}={v}" for k, v in options.items() if k not in taken and v != defaults[k]]:
            log(f"sampler.name={cfg.sampler.name}: {', '.join(ignored)} apply to other samplers and are ignored")
        sampler = make_sampler(cfg.sampler.name, train_prompts, cfg.seed, **options)
    except ValueError as e:
        raise UserError(f"config key sampler: {e}") from None
    plan = update_plan(cfg, tokenizer.pad_token_id)  # the loss and its arguments, decided once
    with ExitStack() as stack:
        # the workers first: LoRA target modules, the device and the rollout engine can still
        # refuse the configuration, and OUT is untouched until they have started
        workers = stack.enter_context(start_workers(
            cfg, path, model, tokenizer, plan, context_length(cfg, model.config, limit),
            version=state["iteration"] if state else 0, log=log, lora_resume=lora_resume))
        prepare_out(out, cfg, overwrite or resume, resuming=checkpoint is not None)
        if state is not None:  # rows logged after the checkpoint would otherwise appear twice
            truncate_jsonl(out / "metrics.jsonl", state["metrics_lines"])
            truncate_jsonl(out / "eval.jsonl", state["eval_lines"])
            for f in (out / "eval_responses").glob("*.jsonl"):  # evaluated after the checkpoint
                m = RESPONSES_NAME.fullmatch(f.name)
                if m and int(m[1]) > state["iteration"]:
                    f.unlink()
        stops = stop_token_ids(tokenizer, model)
        sinks = stack.enter_context(open_sinks(cfg, out, resumed_at=state["iteration"] if state else None))
        run = Run(
            cfg, out, tokenizer, train_prompts, test_prompts, sampler, ReplayBuffer(),
            router_from_config(cfg.reward, log, reward_fn),
            workers, stops, eval_sampling_params(cfg, stops, seed=cfg.seed + 10**6),
            stack.enter_context(TeeLog(JsonlLog(out / "metrics.jsonl"), sinks, "metrics")),
            stack.enter_context(TeeLog(JsonlLog(out / "eval.jsonl"), sinks, "eval")),
            resumed_from=checkpoint,
            background=ThreadPoolExecutor(1, thread_name_prefix="rollout") if cfg.rollout.overlap else None,
        )
        if run.background:
            stack.callback(run.background.shutdown)
        if state is not None:
            run.load_state_dict(state)
            if (checkpoint / OPTIMIZER).is_file():  # algorithm.optimizer_reset=false: its moments go on
                workers.trainer.load_optimizer_state(torch.load(checkpoint / OPTIMIZER, weights_only=True))
            log(f"resuming {out} from {checkpoint.name} (iteration {run.progress.iteration})")
        yield run


def rollout_metrics(result: PartialRolloutResult, buffer: ReplayBuffer, seconds: float) -> dict[str, float]:
    """Rollout statistics of one iteration: outcomes of the segments generated (report
    §2.6.2), the replay buffer, and reward/length of the trajectories trained on."""
    segments = sum(result.outcomes.values())
    out = {f"rollout/frac_{o}": result.outcomes[o] / max(segments, 1) for o in OUTCOMES}
    out.update({f"rollout/num_{o}": float(result.outcomes[o]) for o in OUTCOMES})
    out.update({
        "rollout/tokens_per_s": result.tokens_generated / max(seconds, 1e-9),
        "rollout/continued": float(result.continued),
        "rollout/not_started": float(result.not_started),
        "rollout/buffer_unfinished": float(buffer.num_unfinished()),
        "rollout/buffer_waiting": float(buffer.num_waiting()),
    })
    trajs = result.trajectories
    out["rollout/trained"] = float(len(trajs))
    if not trajs:
        return out
    lens = [t.num_tokens for t in trajs]
    n = len(trajs)
    groups: dict[int, list[bool]] = {}
    for t in trajs:
        groups.setdefault(t.group, []).append(t.correct)
    out.update({
        "reward/mean": sum(t.reward for t in trajs) / n,
        "reward/accuracy": sum(t.correct for t in trajs) / n,
        "rollout/len_mean": sum(lens) / n,
        "rollout/len_max": float(max(lens)),
        "rollout/frac_groups_all_equal": sum(len(set(g)) == 1 for g in groups.values()) / len(groups),
    })
    # Length of right and of wrong responses apart: what the length reward (report §2.3.3) acts on
    for name, ts in (("correct", [t for t in trajs if t.correct]), ("wrong", [t for t in trajs if not t.correct])):
        if ts:
            out[f"rollout/len_mean_{name}"] = sum(t.num_tokens for t in ts) / len(ts)
    by_task: dict[str, list[Trajectory]] = {}
    for t in trajs:
        by_task.setdefault(t.prompt.task, []).append(t)
    if len(by_task) > 1:  # several data sources (e.g. text and vision): accuracy and length of each
        for task, ts in sorted(by_task.items()):
            out[f"reward/accuracy/{task}"] = sum(t.correct for t in ts) / len(ts)
            out[f"rollout/len_mean/{task}"] = sum(t.num_tokens for t in ts) / len(ts)
    return out


def run_summary(metrics: list[dict], evals: list[dict], greedy_evals: list[dict]) -> dict:
    """First and last training reward, test accuracy/tokens before and after (summary.json)."""
    summary = {
        "train_reward_first": next((m["reward/mean"] for m in metrics if "reward/mean" in m), None),
        "train_reward_last": next((m["reward/mean"] for m in reversed(metrics) if "reward/mean" in m), None),
    }
    if evals:
        summary.update({
            "test_accuracy_before": evals[0]["accuracy"],
            "test_accuracy_after": evals[-1]["accuracy"],
            "test_accuracy_gain_points": 100 * (evals[-1]["accuracy"] - evals[0]["accuracy"]),
            "test_mean_tokens_before": evals[0]["mean_tokens"],
            "test_mean_tokens_after": evals[-1]["mean_tokens"],
            "test_per_level_before": {k: v["accuracy"] for k, v in evals[0]["per_level"].items()},
            "test_per_level_after": {k: v["accuracy"] for k, v in evals[-1]["per_level"].items()},
        })
        if "per_task" in evals[-1]:  # several data sources
            summary["test_per_task_before"] = {k: v["accuracy"] for k, v in evals[0]["per_task"].items()}
            summary["test_per_task_after"] = {k: v["accuracy"] for k, v in evals[-1]["per_task"].items()}
    if greedy_evals:
        summary.update({
            "test_accuracy_greedy_before": greedy_evals[0]["accuracy"],
            "test_accuracy_greedy_after": greedy_evals[-1]["accuracy"],
        })
    return summary
