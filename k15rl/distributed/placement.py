"""Placement (report §2.6.1): where the rollout engine and the trainer run, behind one
interface. The loop sees `Workers` only and never asks which backend it has:

    with start_workers(cfg, path, model, tokenizer, plan, max_model_len) as workers:
        segments = workers.engine.generate(requests, params)           # rollout
        with workers.update_phase():
            metrics = workers.trainer.update(trajectories, version, seed)  # update
        workers.sync_weights(version + 1)                              # weight sync

`distributed.backend=local`: the engine and a `PolicyTrainer` in this process (the engine
generating with the trainer's own parameters unless the rollout overlaps the update:
`shares_weights`).
`distributed.backend=ray`: an `EnginePool` of rollout workers and a `RemoteTrainer` of
trainer workers (FSDP2 shards when there are several), k15rl/distributed/ray_backend.py.
Leaving the `with` block always stops the workers, whatever happened inside.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from k15rl.config import TrainConfig
from k15rl.malloc import release_free_memory
from k15rl.models.loading import load_model, on_device
from k15rl.models.lora import LoraResume, add_lora, served_module
from k15rl.rollout.engine import RolloutEngine
from k15rl.rollout.factory import make_engine
from k15rl.trainer.update import PolicyTrainer, UpdatePlan
from k15rl.types import Trajectory


class Trainer(Protocol):
    """Where the policy is trained (report §2.6.1): `PolicyTrainer` in this process, or
    `ray_backend.RemoteTrainer` over trainer workers."""

    def update(self, trajectories: Sequence[Trajectory], version: int, seed: int) -> dict[str, float]:
        """All optimizer steps of iteration `version`; returns the averaged metrics."""
        ...

    def weights(self) -> Any:
        """The newest weights in the form the engine's `load_weights` takes (a state
        dict, or on Ray a reference to one in the object store)."""
        ...

    def current_model(self):
        """A model holding the newest weights, for checkpoints and the final save."""
        ...

    def optimizer_state(self) -> dict | None:
        """The optimizer's state for a checkpoint when it carries over iterations, else None."""
        ...

    def offload(self) -> None:
        """Free the device for the rollout phase (colocated mode); `onload` undoes it."""
        ...

    def onload(self) -> None: ...


@dataclass
class Workers:
    """The rollout engine and the trainer of a run, wherever they are placed.

    `colocate` (distributed.colocate): the two share a device and take turns on it; the
    engine sleeps during the update (`update_phase`) and the trainer's weights leave the
    device while the engine samples. `rollout_stats`: per-iteration numbers of the placement (on Ray the
    requests each rollout worker pulled), merged into the iteration's metrics.
    """

    engine: RolloutEngine
    trainer: Trainer
    colocate: bool = False
    rollout_stats: Callable[[], dict[str, float]] = field(default=dict)
    version: int = 0  # the policy version the engine's weights are
    shared: bool = False  # the engine generates with the trainer's own parameters (`shares_weights`)

    @contextmanager
    def update_phase(self) -> Iterator[None]:
        """The trainer's turn on the device: colocated, the engine sleeps and the trainer's
        weights come back to the device for the block, then the engine wakes up. The
        update's freed heap pages go back to the operating system after (`release_free_memory`)."""
        if self.colocate:
            self.engine.sleep()
            self.trainer.onload()
        yield
        release_free_memory()
        if self.colocate:
            self.trainer.offload()
            self.engine.wake_up()

    def sync_weights(self, version: int) -> None:
        """Weight sync (report §2.6.1): the trainer's newest weights, those of policy
        `version`, become the engine's; nothing moves when it already has them."""
        if self.version != version:
            if not self.shared:  # shared: the engine already computes with the new parameters
                self.engine.load_weights(self.trainer.weights())
            self.version = version


def shares_weights(cfg: TrainConfig) -> bool:
    """Whether the engine generates with the trainer's own parameters: the local backend's
    built-in engine, when no rollout runs during an update (`rollout.overlap` samples from
    pi_i while the trainer changes it, so it needs a copy). Sharing saves a copy of the
    weights and the weight sync; the tokens sampled are the same as with a synced copy
    (tests/test_rollout_sharing.py). With LoRA the engine runs the model with its adapters
    in place (W x + (alpha / r) B A x) instead of the merged weights."""
    return cfg.distributed.backend == "local" and cfg.rollout.engine == "hf" and not cfg.rollout.overlap


@contextmanager
def start_workers(cfg: TrainConfig, path: str | Path, model, tokenizer, plan: UpdatePlan, max_model_len: int,
                  version: int = 0, log: Callable[[str], None] = print,
                  lora_resume: LoraResume | None = None) -> Iterator[Workers]:
    """The engine and trainer `distributed.backend` asks for, serving the policy `model`
    (stored at `path`, policy version `version`); stopped when the block ends.

    `max_model_len`: the longest prompt + response the engines must hold. `plan`: the
    update every trainer runs (decided once by the loop). With `model.lora.rank` > 0 the
    trainer trains LoRA adapters (k15rl/models/lora.py) while the engine serves plain
    merged weights: on `model` (a copy taken first), or, resuming (`lora_resume`), on the
    base model's folder with the checkpoint's adapter, `model` and `path` then holding
    the checkpoint's merged weights.
    """
    close: Callable[[], None] | None = None
    if cfg.distributed.backend == "ray":
        from k15rl.distributed.ray_backend import start_ray_workers, stop_workers

        pool, trainer = start_ray_workers(cfg, path, model, plan, max_model_len, log)
        workers = Workers(pool, trainer, cfg.distributed.colocate, pool.request_stats, version)
        close = partial(stop_workers, pool, trainer)
    else:
        share = shares_weights(cfg)
        engine = None if share else make_engine(cfg.rollout, path, tokenizer, model=model, dtype=cfg.model.dtype,
                                                max_model_len=max_model_len, seed=cfg.seed)
        if cfg.model.lora.rank:  # after the engine took its copy of the plain model
            base = model if lora_resume is None else load_model(lora_resume.base, cfg.model.dtype)
            model = add_lora(base, cfg.model.lora, lora_resume and lora_resume.adapter)
        model = on_device(model, cfg.distributed.device)  # after the engine took its copy (on the CPU)
        if share:
            engine = make_engine(cfg.rollout, path, tokenizer, model=served_module(model), max_model_len=max_model_len,
                                 seed=cfg.seed, share=True)
        # shared weights need no turns on the device: nothing to offload, no second copy to put to sleep
        workers = Workers(engine, PolicyTrainer(model, plan, device=cfg.distributed.device, tokenizer=tokenizer),
                          cfg.distributed.colocate and not share, version=version, shared=share)
    try:
        if workers.colocate:
            workers.trainer.offload()  # rollout comes first
        yield workers
    finally:
        if close is not None:
            close()
