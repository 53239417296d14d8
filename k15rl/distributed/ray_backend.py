"""Ray backend: the loop is the master; rollout and trainer workers are Ray actors
(report §2.6.1-2, RECIPE §6).

    master (this process)                 Ray cluster
    prompts, replay buffer, rewards,  -->  WorkQueue <-- pull -- RolloutWorker x N (engine each)
    evaluation, checkpoints           -->  TrainerWorker x M (FSDP2 shards when M > 1)
                                           weights: trainer rank 0 --object store--> rollout workers

The master's loop is the same function as in one process (`k15rl.trainer.loop.train`):
through `k15rl.distributed.placement.Workers` it sees an `EnginePool`, which is a
`RolloutEngine`, and a `RemoteTrainer`, which is a `Trainer`. The math does not depend on the placement: trajectories, rewards and the
loss are the same objects; only where they are computed changes.

No hangs: every wait on the workers goes through `_get`, which stops with a
`WorkerFailure` naming the worker when one dies (its actor is lost) or with a
`WorkerTimeout` when one has not answered within `distributed.timeout_s`.

Work distribution (report §2.6.2): a generate call puts its requests into a queue
actor; every rollout worker pulls requests when its engine has free slots (the
continuous-batching engine asks for more the moment a sequence finishes; an engine
without that pulls `distributed.chunk_size` at a time). A worker busy with long
trajectories takes nothing new until it has room; the others take the short ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from collections import deque
from inspect import signature
from pathlib import Path
from typing import Callable, Sequence

import torch

from k15rl.config import TrainConfig
from k15rl.distributed.shard import ONE_RANK, full_state_dict, init_process_group, shard_model
from k15rl.errors import UserError, WorkerFailure, WorkerTimeout
from k15rl.malloc import release_free_memory, return_freed_memory
from k15rl.rollout.engine import SamplingParams
from k15rl.trainer.update import PolicyTrainer, UpdatePlan
from k15rl.types import GenerationRequest, Segment, Trajectory


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("distributed.backend=ray needs Ray: pip install 'k15rl[ray]'") from None
    return ray


PLACEMENT_TIMEOUT_S = 120  # how long the workers' resources may take to become free on the cluster
_started_here = False  # whether this process started the local cluster it is connected to
_running: list[tuple["EnginePool", "RemoteTrainer"]] = []  # workers started by this process, not yet stopped


def _needed_cpus(cfg: TrainConfig) -> float:
    d = cfg.distributed
    return (d.rollout_workers + d.trainer_workers) * d.cpus_per_worker


def start_ray(cfg: TrainConfig, log: Callable[[str], None] = print) -> None:
    """Connect to `distributed.address`, or start a local cluster sized for the workers
    (a local cluster started earlier by this process that is too small is restarted)."""
    global _started_here
    ray = _ray()
    d = cfg.distributed
    if ray.is_initialized():
        if not (_started_here and ray.cluster_resources().get("CPU", 0) < _needed_cpus(cfg)):
            return
        ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster needs no token file in ~/.ray
    if d.address:
        try:
            ray.init(address=d.address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"config key distributed.address: cannot connect to Ray at {d.address!r}: {e}") from None
        return
    # Logical CPUs: enough for every actor's reservation even on a small machine
    # (Ray does not pin actors to cores; threads per actor are set separately).
    cpus = d.num_cpus or max(os.cpu_count() or 1, math.ceil(_needed_cpus(cfg)))
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=d.object_store_mb * 2**20,
             log_to_driver=True, configure_logging=False)
    _started_here = True
    log(f"ray: local cluster, {cpus} CPUs, object store {d.object_store_mb} MB")


def _get(refs: list, names: list[str], what: str, timeout_s: float | None):
    """`ray.get(refs)`, the calls of the workers `names` (in order), within `timeout_s`
    seconds in all (None: no limit). A worker that died -> WorkerFailure naming it, the
    moment its call fails (not when the others are done); one not done in time ->
    WorkerTimeout naming the first such worker. `what`: the step ("the rollout")."""
    ray = _ray()
    from ray.exceptions import RayActorError, WorkerCrashedError

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = dict(zip(refs, names))
    while pending:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        if not ready:
            raise WorkerTimeout(next(iter(pending.values())),
                                f"did not finish {what} within {timeout_s:g} s (distributed.timeout_s)")
        for ref in ready:
            name = pending.pop(ref)
            try:
                ray.get(ref)
            except (RayActorError, WorkerCrashedError) as e:
                raise WorkerFailure(name, f"died during {what} ({type(e).__name__})") from None
    return ray.get(refs)


def _worker_setup(cpus: float) -> None:
    """In a worker process: torch threads = the CPUs reserved for it; no per-worker
    weight-loading progress bars in the master's output (Ray forwards workers' stderr)."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, int(cpus)))
    return_freed_memory()
    hf_logging.disable_progress_bar()


class WorkQueue:
    """The master's requests, handed out to rollout workers on demand."""

    def __init__(self):
        self.items: deque[tuple[int, GenerationRequest]] = deque()

    def put(self, items: list[tuple[int, GenerationRequest]]) -> None:
        self.items.extend(items)

    def take(self, n: int) -> list[tuple[int, GenerationRequest]]:
        return [self.items.popleft() for _ in range(min(n, len(self.items)))]


class RolloutWorker:
    """One rollout engine (`rollout.engine`) on the policy at `path`."""

    def __init__(self, cfg: TrainConfig, path: str, max_model_len: int, rank: int):
        from k15rl.models.loading import load_tokenizer
        from k15rl.rollout.factory import make_engine

        _worker_setup(cfg.distributed.cpus_per_worker)
        self.rank = rank
        tokenizer = load_tokenizer(path, cfg.model.chat_template)
        self.engine = make_engine(cfg.rollout, path, tokenizer, dtype=cfg.model.dtype, max_model_len=max_model_len,
                                  seed=cfg.seed + 7 * rank)
        self.pulls = "more" in signature(self.engine.generate).parameters

    def ready(self) -> bool:
        """Answers once the worker has loaded its engine (the start-up waits on it)."""
        return True

    def run(self, queue, params: SamplingParams, chunk: int, token_budget: int = 0) -> list[tuple[int, Segment]]:
        """Generate for requests pulled from `queue` until it is empty, or (`token_budget`)
        until this worker has sampled that many tokens; (index, segment) pairs of the
        requests it pulled."""
        import ray

        taken: list[int] = []

        def take(n: int) -> list[GenerationRequest]:
            batch = ray.get(queue.take.remote(min(n, chunk)))
            taken.extend(i for i, _ in batch)
            return [r for _, r in batch]

        # Workers draw different random streams; a worker's stream depends on what it pulled.
        params = dataclasses.replace(params, seed=params.seed * 1009 + self.rank)
        if self.pulls:
            budget = {"token_budget": token_budget} if token_budget else {}
            segments = self.engine.generate([], params, more=take, **budget)
        else:  # chunk by chunk; with a budget, each chunk gets what is left of it, and pulling stops once spent
            segments, calls, spent = [], 0, 0
            while (not token_budget or spent < token_budget) and (batch := take(chunk)):
                budget = {"token_budget": token_budget - spent} if token_budget else {}
                segs = self.engine.generate(batch, dataclasses.replace(params, seed=params.seed + 65537 * calls),
                                            **budget)
                spent += sum(len(s.token_ids) for s in segs)
                segments += segs
                calls += 1
        return list(zip(taken, segments))

    def load_weights(self, state_dict) -> None:
        self.engine.load_weights(state_dict)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()


class EnginePool:
    """The rollout workers seen as one `RolloutEngine` by the master's loop."""

    def __init__(self, workers: list, chunk_size: int, timeout_s: float | None = None, queue=None):
        ray = _ray()
        self.workers, self.chunk, self.timeout_s = workers, chunk_size, timeout_s
        self.names = [f"rollout worker {i}" for i in range(len(workers))]
        self.queue = queue if queue is not None else ray.remote(WorkQueue).options(num_cpus=0).remote()
        self.last_counts: list[int] = []  # requests each worker served in the last call

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams,
                 token_budget: int = 0) -> list[Segment]:
        """`token_budget` (rollout.iteration_tokens): split evenly over the workers, each of
        which stops pulling and cuts what it runs at its share; requests no worker pulled
        get an empty "length" segment, as HFEngine gives them."""
        _ray()  # a clear error if ray is missing, before any remote call
        _get([self.queue.put.remote(list(enumerate(requests)))], ["the work queue"], "the rollout", self.timeout_s)
        share = -(-token_budget // len(self.workers)) if token_budget else 0
        parts = _get([w.run.remote(self.queue, params, self.chunk, share) for w in self.workers], self.names,
                     "the rollout", self.timeout_s)
        out: list[Segment | None] = [None] * len(requests)
        for part in parts:
            for i, seg in part:
                out[i] = seg
        if token_budget:  # what the budget left in the queue
            for i, _ in _get([self.queue.take.remote(len(requests))], ["the work queue"], "the rollout",
                             self.timeout_s)[0]:
                out[i] = Segment.not_started()
        self.last_counts = [len(p) for p in parts]
        assert all(s is not None for s in out), "a request was not served"
        return out  # type: ignore[return-value]

    def request_stats(self) -> dict[str, float]:
        """How evenly the last generate call's requests spread over the workers."""
        if not self.last_counts:
            return {}
        return {"rollout/worker_requests_min": float(min(self.last_counts)),
                "rollout/worker_requests_max": float(max(self.last_counts))}

    def load_weights(self, weights) -> None:
        """Weights (a state dict, or a reference to one in the object store) to every worker."""
        ray = _ray()
        remote = isinstance(weights, ray.ObjectRef)  # from trainer worker 0 (RemoteTrainer.weights)
        ref = weights if remote else ray.put(dict(weights))
        loads = [w.load_weights.remote(ref) for w in self.workers]
        _get([ref, *loads] if remote else loads, ["trainer worker 0", *self.names] if remote else self.names,
             "the weight sync", self.timeout_s)

    def sleep(self) -> None:
        _get([w.sleep.remote() for w in self.workers], self.names, "going to sleep", self.timeout_s)

    def wake_up(self) -> None:
        _get([w.wake_up.remote() for w in self.workers], self.names, "waking up", self.timeout_s)


class TrainerWorker:
    """One trainer process: the whole model, or (with several workers) an FSDP2 shard of it."""

    def __init__(self, cfg: TrainConfig, path: str, rank: int, world: int, plan: UpdatePlan):
        _worker_setup(cfg.distributed.cpus_per_worker)
        self.path, self.rank, self.world, self.plan = path, rank, world, plan
        self.dtype, self.device = cfg.model.dtype, cfg.distributed.device
        self.trainer: PolicyTrainer | None = None

    def address(self) -> tuple[str, int]:
        """This worker's node address and a free port on it: the process group's rendezvous."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        from k15rl.models.loading import load_model, load_tokenizer
        from k15rl.models.vision import is_vision_folder

        model = load_model(self.path, self.dtype)
        tokenizer = load_tokenizer(self.path) if is_vision_folder(self.path) else None  # pixel values
        if self.device == "cuda":
            model.to("cuda")
        shard = ONE_RANK
        if self.world > 1:
            backend = "nccl" if self.device == "cuda" else "gloo"
            shard = init_process_group(self.rank, self.world, master_addr, master_port, backend)
            model = shard_model(model, shard, self.device)
        self.trainer = PolicyTrainer(model, self.plan, shard, self.device, tokenizer)

    def update(self, trajectories: list[Trajectory], version: int, seed: int) -> dict[str, float]:
        metrics = self.trainer.update(trajectories, version, seed)
        release_free_memory()  # the update's freed heap pages (k15rl/malloc.py)
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (every rank must take part when sharded), None elsewhere."""
        if self.world > 1:
            return full_state_dict(self.trainer.model, self.trainer.shard)
        return {k: v.detach().to("cpu") for k, v in self.trainer.model.state_dict().items()}

    def offload(self) -> None:
        self.trainer.offload()

    def onload(self) -> None:
        self.trainer.onload()


class RemoteTrainer:
    """The trainer workers seen as one `Trainer` by the master's loop."""

    def __init__(self, workers: list, master_model, placement=None, timeout_s: float | None = None):
        self.workers, self.master_model, self.placement = workers, master_model, placement
        self.timeout_s = timeout_s
        self.names = [f"trainer worker {i}" for i in range(len(workers))]
        self._pending: list = []  # state_dict calls of ranks > 0 (they only take part in the gather)

    def _get(self, refs: list, what: str, names: list[str] | None = None):
        return _get(refs, names or self.names, what, self.timeout_s)

    def _settle(self) -> None:
        self._get(self._pending, "the weight gather", self.names[1:])
        self._pending = []

    def update(self, trajectories: Sequence[Trajectory], version: int, seed: int) -> dict[str, float]:
        ray = _ray()
        self._settle()
        ref = ray.put(list(trajectories))  # one copy in the object store, read by every rank
        return self._get([w.update.remote(ref, version, seed) for w in self.workers], "the update")[0]

    def weights(self):
        """A reference to rank 0's full state dict in the object store: rollout workers
        fetch it from there directly, it does not pass through the master."""
        refs = [w.state_dict.remote() for w in self.workers]
        self._pending = refs[1:]
        return refs[0]

    def optimizer_state(self) -> None:
        """Nothing to checkpoint: trainer workers reset their optimizer every iteration
        (algorithm.optimizer_reset=false needs the local backend)."""
        return None

    def current_model(self):
        """The master's copy of the model, brought up to date (checkpoints, final save)."""
        (state,) = self._get([self.weights()], "the weight gather", self.names[:1])
        self._settle()
        self.master_model.load_state_dict(state, strict=True)
        return self.master_model

    def offload(self) -> None:
        self._settle()
        self._get([w.offload.remote() for w in self.workers], "the offload")

    def onload(self) -> None:
        self._get([w.onload.remote() for w in self.workers], "the onload")

    def close(self) -> None:
        """Stop the trainer workers and free the workers' reserved resources."""
        ray = _ray()
        for w in self.workers:
            ray.kill(w)
        if self.placement is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement)


def _placement(cfg: TrainConfig):
    """Reserve every worker's resources at once (a placement group: all FSDP ranks start
    together or none does, instead of rank 0 waiting for a rank that never gets placed).

    Returns the group and the scheduling options of ("rollout" | "trainer", i). With
    `distributed.colocate`, rollout worker i and trainer worker i share bundle i (one
    device, used by the two phases in turn); otherwise every worker has its own bundle.
    """
    ray = _ray()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    d = cfg.distributed
    share = 2 if d.colocate else 1
    bundle = {"CPU": share * d.cpus_per_worker, **({"GPU": share * d.gpus_per_worker} if d.gpus_per_worker else {})}
    n = d.rollout_workers if d.colocate else d.rollout_workers + d.trainer_workers
    pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        remove_placement_group(pg)
        total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        raise UserError(
            f"the Ray cluster cannot place the workers within {PLACEMENT_TIMEOUT_S} s: they need {n} x {bundle} "
            f"(distributed.rollout_workers/trainer_workers x cpus_per_worker/gpus_per_worker"
            f"{', x2 colocated' if d.colocate else ''}), the cluster has {total}")

    def options(role: str, i: int) -> dict:
        index = i if d.colocate or role == "rollout" else d.rollout_workers + i
        return {"num_cpus": d.cpus_per_worker, "num_gpus": d.gpus_per_worker,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}

    return pg, options


def start_ray_workers(cfg: TrainConfig, path: str | Path, master_model, plan: UpdatePlan, max_model_len: int,
                      log: Callable[[str], None] = print) -> tuple[EnginePool, RemoteTrainer]:
    """Start the rollout workers and the trainer workers on the Ray cluster.

    Workers an earlier run of this process left running (it ended with an exception,
    e.g. a crash before a resume) are stopped first: their reserved resources would
    otherwise keep the new ones from being placed.
    """
    ray = _ray()
    start_ray(cfg, log)
    for pool, trainer in list(_running):
        stop_workers(pool, trainer)
    d, path = cfg.distributed, str(path)
    pg, where = _placement(cfg)
    rollout_cls, trainer_cls = ray.remote(RolloutWorker), ray.remote(TrainerWorker)
    rollout = [rollout_cls.options(**where("rollout", i)).remote(cfg, path, max_model_len, i)
               for i in range(d.rollout_workers)]
    trainers = [trainer_cls.options(**where("trainer", i)).remote(cfg, path, i, d.trainer_workers, plan)
                for i in range(d.trainer_workers)]
    queue = ray.remote(WorkQueue).options(num_cpus=0).remote()
    timeout = d.timeout_s or None
    names = [f"trainer worker {i}" for i in range(d.trainer_workers)]
    start_up = timeout and max(timeout, PLACEMENT_TIMEOUT_S)  # loading the model may take longer than a step
    try:
        (addr, port), = _get([trainers[0].address.remote()], names[:1], "the start-up", start_up)
        _get([t.setup.remote(addr, port) for t in trainers], names, "the start-up", start_up)
        # Every process started and its model loaded before the first step's limit applies.
        _get([queue.take.remote(0), *(w.ready.remote() for w in rollout)],
             ["the work queue", *(f"rollout worker {i}" for i in range(len(rollout)))], "the start-up", start_up)
    except BaseException:
        for w in (*rollout, *trainers, queue):
            ray.kill(w)
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        raise
    log(f"ray: {d.rollout_workers} rollout worker(s) ({cfg.rollout.engine}), {d.trainer_workers} trainer worker(s)"
        f"{' (FSDP2)' if d.trainer_workers > 1 else ''}{', colocated' if d.colocate else ''}")
    _running.append((EnginePool(rollout, d.chunk_size, timeout, queue), RemoteTrainer(trainers, master_model, pg, timeout)))
    return _running[-1]


def stop_workers(pool: EnginePool, trainer: RemoteTrainer) -> None:
    ray = _ray()
    if (pool, trainer) in _running:
        _running.remove((pool, trainer))
    for w in pool.workers:
        ray.kill(w)
    ray.kill(pool.queue)
    trainer.close()
