"""The k1.5 RL loop (report §2.3, §2.6.1): one function that reads top to bottom.

    sample prompts -> rollout -> reward -> update -> weight sync -> log -> evaluate -> checkpoint

Every other part is a component with a small interface; this is the only place that
orchestrates them.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from k15rl.algorithms import LOSSES
from k15rl.config import TrainConfig, loss_kwargs, to_dict
from k15rl.data import build_prompts, fit_context, prompt_token_limit
from k15rl.errors import UserError
from k15rl.models import resolve_model_path
from k15rl.models.loading import load_model, load_tokenizer, stop_token_ids
from k15rl.rewards import length_weight, score
from k15rl.rewards.compose import router_from_config
from k15rl.rollout.collect import OUTCOMES, PartialRolloutResult, partial_rollout
from k15rl.rollout.engine import RolloutEngine, SamplingParams
from k15rl.rollout.factory import context_length, make_engine
from k15rl.rollout.replay import ReplayBuffer
from k15rl.sampling import make_sampler
from k15rl.trainer.checkpoint import (
    JsonlLog,
    latest_checkpoint,
    read_jsonl,
    rng_state,
    save_checkpoint,
    save_hf,
    set_rng_state,
    truncate_jsonl,
    write_json_atomic,
)
from k15rl.trainer.evaluate import eval_sampling_params, evaluate
from k15rl.trainer.plots import plot_run
from k15rl.trainer.trainer import LocalTrainer, Trainer
from k15rl.trainer.update import UpdateSettings

RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json", "final", "checkpoints", "curves.png")


@dataclass
class Policy:
    model: object
    tokenizer: object
    path: Path


def load_policy(cfg: TrainConfig, log: Callable[[str], None], checkpoint: Path | None = None) -> Policy:
    """The model to train: `model.path`, or a checkpoint of this run when resuming."""
    path = checkpoint or resolve_model_path(cfg.model.path, "model.path", log)
    tokenizer = load_tokenizer(path, cfg.model.chat_template)
    return Policy(load_model(path, cfg.model.dtype), tokenizer, path)


def holds_run(out: Path) -> bool:
    return out.exists() and any((out / f).exists() for f in RUN_FILES)


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


def rollout_metrics(result: PartialRolloutResult, buffer: ReplayBuffer, seconds: float,
                    engine: RolloutEngine | None = None) -> dict[str, float]:
    """Rollout statistics of one iteration: outcomes of the segments generated (report
    §2.6.2), the replay buffer, and reward/length of the trajectories trained on."""
    segments = sum(result.outcomes.values())
    out = {f"rollout/frac_{o}": result.outcomes[o] / max(segments, 1) for o in OUTCOMES}
    out.update({f"rollout/num_{o}": float(result.outcomes[o]) for o in OUTCOMES})
    out.update({
        "rollout/tokens_per_s": result.tokens_generated / max(seconds, 1e-9),
        "rollout/continued": float(result.continued),
        "rollout/buffer_unfinished": float(buffer.num_unfinished()),
        "rollout/buffer_waiting": float(buffer.num_waiting()),
    })
    if counts := getattr(engine, "last_counts", None):  # Ray: requests each rollout worker pulled
        out["rollout/worker_requests_min"], out["rollout/worker_requests_max"] = float(min(counts)), float(max(counts))
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
    return out


def update_settings(cfg: TrainConfig) -> UpdateSettings:
    """The optimizer and loss settings of every iteration's update (report §2.3.2)."""
    a = cfg.algorithm
    return UpdateSettings(
        lr=a.lr, betas=(a.betas[0], a.betas[1]), weight_decay=a.weight_decay, grad_clip=a.grad_clip,
        minibatches=a.minibatches, epochs=a.epochs, micro_batch=a.micro_batch,
        temperature=cfg.rollout.temperature or 1.0, recompute_old_logprobs=a.recompute_old_logprobs,
        autocast_bf16=a.autocast_bf16, seed=cfg.seed, train_on_stale=cfg.rollout.train_on_stale_segments,
    )


def place(cfg: TrainConfig, policy: Policy, max_model_len: int, loss_fn: Callable, loss_kw: dict,
          log: Callable[[str], None]) -> tuple[RolloutEngine, Trainer]:
    """Placement (report §2.6.1): the rollout engine and the trainer in this process, or
    as Ray workers (`distributed.backend`); the loop uses them the same way."""
    if cfg.distributed.backend == "ray":
        from k15rl.distributed.ray_backend import start_workers

        return start_workers(cfg, policy.path, policy.model, policy.tokenizer.pad_token_id, max_model_len, log)
    engine = make_engine(cfg.rollout, policy.path, policy.tokenizer, model=policy.model, dtype=cfg.model.dtype,
                         max_model_len=max_model_len, seed=cfg.seed)
    if cfg.distributed.device != "cpu":  # after the engine took its copy (the hf engine runs on CPU)
        policy.model.to(cfg.distributed.device)
    return engine, LocalTrainer(policy.model, loss_fn, loss_kw, policy.tokenizer.pad_token_id, cfg.distributed.device)


def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Run RL as configured; returns the summary also written to OUT/summary.json.

    `resume`: continue the run in `cfg.out` from its newest complete checkpoint (model,
    sampler, replay buffer, RNG states, log positions); with none, start it over.
    """
    from tqdm import tqdm

    t_start = time.time()
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    # Everything that can fail on bad input happens before OUT is touched.
    train_prompts, test_prompts = build_prompts(cfg, log)
    if resume and not (out / "config.yaml").is_file():
        raise UserError(f"--resume {out}: no run to resume there (no config.yaml)")
    if not (resume or overwrite) and holds_run(out):
        raise UserError(f"output folder {out} already holds a run: pass --resume {out} to continue it, "
                        f"--overwrite to replace it, or choose another out=")
    checkpoint = latest_checkpoint(out) if resume else None
    state = json.loads((checkpoint / "state.json").read_text()) if checkpoint else None
    if resume and not checkpoint:
        log(f"{out}: no complete checkpoint yet, starting the run over from iteration 0")
    policy = load_policy(cfg, log, checkpoint)
    limit = prompt_token_limit(cfg, policy.model.config)  # prompts must leave room for the response
    train_prompts, _ = fit_context(train_prompts, policy.tokenizer, limit, "train", log)
    test_prompts, _ = fit_context(test_prompts, policy.tokenizer, limit, "test", log)
    try:
        options = {k: v for k, v in to_dict(cfg.sampler).items() if k != "name"}
        sampler = make_sampler(cfg.sampler.name, train_prompts, cfg.seed, **options)
    except ValueError as e:
        raise UserError(f"config key sampler: {e}") from None
    prepare_out(out, cfg, overwrite or resume, resuming=checkpoint is not None)
    if state:  # rows logged after the checkpoint would otherwise appear twice
        truncate_jsonl(out / "metrics.jsonl", state["metrics_lines"])
        truncate_jsonl(out / "eval.jsonl", state["eval_lines"])

    tok = policy.tokenizer
    loss_fn = LOSSES[cfg.algorithm.loss]
    loss_kw = loss_kwargs(loss_fn, cfg.algorithm)
    engine, trainer = place(cfg, policy, context_length(cfg, policy.model.config, limit), loss_fn, loss_kw, log)
    colocate = cfg.distributed.colocate  # one device, shared: the idle phase's part sleeps
    if colocate:
        trainer.offload()  # rollout comes first
    stops = stop_token_ids(tok, policy.model)
    settings = update_settings(cfg)
    eval_params = eval_sampling_params(cfg, stops, seed=cfg.seed + 10**6)
    router = router_from_config(cfg.reward)  # the reward function of each data source, with time limits
    metrics_log, eval_log = JsonlLog(out / "metrics.jsonl"), JsonlLog(out / "eval.jsonl")

    def run_eval(iteration: int, params: SamplingParams = eval_params) -> dict:
        t0 = time.time()
        result, _ = evaluate(engine, tok, test_prompts, params, cfg.eval.samples_per_prompt, rewards=router)
        row = {"iteration": iteration, "temperature": params.temperature, **result, "time/eval": time.time() - t0}
        eval_log.write(row)
        return row

    # Sampled accuracy can rise while greedy accuracy does not: a sampled evaluation is
    # joined by a greedy one at the start and the end, so both are on record.
    greedy_params = dataclasses.replace(eval_params, temperature=0.0)
    also_greedy = bool(test_prompts) and cfg.eval.temperature > 0
    r = cfg.rollout
    buffer, next_group = ReplayBuffer(), 0
    train_seconds, done = 0.0, 0  # time spent in iterations (evaluations excluded); iterations run
    consecutive_skips = 0  # optimizer steps in a row skipped for a non-finite loss or gradient
    if state:  # resume: everything the next iteration depends on, as it was
        sampler.load_state_dict(state["sampler"])
        buffer.load_state_dict(state["replay_buffer"])
        next_group, done, train_seconds = state["next_group"], state["iteration"], state["train_seconds"]
        consecutive_skips = state["consecutive_skips"]
        set_rng_state(state["rng"])
        logged = read_jsonl(out / "eval.jsonl")
        evals = [e for e in logged if e["temperature"] == cfg.eval.temperature]
        greedy_evals = [e for e in logged if e["temperature"] == 0.0] if also_greedy else []
        log(f"resuming {out} from {checkpoint.name} (iteration {done})")
    else:
        evals = [run_eval(0)] if test_prompts else []
        greedy_evals = [run_eval(0, greedy_params)] if also_greedy else []
    engine_version, prefetched = done, None  # policy version in the engine; a rollout running ahead (rollout.overlap)
    background = ThreadPoolExecutor(1, thread_name_prefix="rollout") if r.overlap else None

    def start_rollout(it: int) -> Callable[[], PartialRolloutResult]:
        """Sample prompts (report §2.3.4) and roll out with the engine's policy: continue the
        buffer's trajectories first, start K per new prompt, each at most segment_tokens new
        tokens (§2.6.2). Runs now, or in the background while the trainer updates."""
        nonlocal next_group
        n_new = r.prompts_per_iteration
        if r.continue_first:  # cut trajectories take their rows first; new prompts fill the rest
            n_new = max(0, (r.prompts_per_iteration * r.k - buffer.num_unfinished()) // r.k)
        prompts = sampler.sample(n_new)  # called every iteration, even for 0, so schedules follow iterations
        params = SamplingParams(
            max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, stop_token_ids=stops,
            stop_strings=r.stop_strings, seed=cfg.seed * 100003 + it, repeat_ngram=r.repeat_ngram,
            repeat_times=r.repeat_times, repeat_min_tokens=r.repeat_min_tokens,
        )
        first, next_group = next_group, next_group + len(prompts)
        job = partial(partial_rollout, engine, tok, buffer, prompts, r.k, params, version=engine_version,
                      segment_tokens=r.segment_tokens, max_tokens=r.max_new_tokens, first_group=first)
        if background:
            return background.submit(job).result
        result = job()
        return lambda: result

    def run_state() -> dict:
        """What a resumed run needs besides the weights (a checkpoint's state.json)."""
        return {
            "iteration": done, "next_group": next_group, "train_seconds": train_seconds,
            "consecutive_skips": consecutive_skips, "sampler": sampler.state_dict(),
            "replay_buffer": buffer.state_dict(), "rng": rng_state(),
            "metrics_lines": metrics_log.lines, "eval_lines": eval_log.lines, "config": to_dict(cfg),
        }

    def sync_engine() -> None:
        """Weight sync: the trainer's newest weights become the engine's policy."""
        nonlocal engine_version
        if engine_version != done:
            engine.load_weights(trainer.weights())
            engine_version = done

    bar = tqdm(range(done, cfg.iterations), desc="rl", unit="it", dynamic_ncols=True, initial=done,
               total=cfg.iterations)
    for it in bar:
        t0 = time.time()
        # 1-2. prompts and rollout: K samples per prompt; groups whose members have all
        # finished come back. With rollout.overlap it was started during the last update.
        if prefetched is None:
            sync_engine()
            prefetched = start_rollout(it)
        result, prefetched = prefetched(), None
        trajs = result.trajectories
        t1 = time.time()
        # 3. rewards: verifier + length penalty after its warm-up (report §2.3.3, §2.3.5)
        w = length_weight(it, cfg.reward.length_weight, cfg.reward.length_warmup_iterations)
        score_stats = score(trajs, length_penalty_weight=w, repeat_penalty=cfg.reward.repeat_penalty, rewards=router)
        rollout_row = rollout_metrics(result, buffer, t1 - t0, engine)
        last = it + 1 == cfg.iterations
        evaluate_now = bool(test_prompts) and (last or bool(cfg.eval.every and (it + 1) % cfg.eval.every == 0))
        checkpoint_now = last or bool(cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0)
        if background and not (last or evaluate_now or checkpoint_now):
            sync_engine()
            prefetched = start_rollout(it + 1)  # by pi_i, one version behind when it is trained on
        t2 = time.time()
        # 4. update: mirror-descent loss, optimizer reset each iteration (report §2.3.2)
        train_metrics: dict[str, float] = {}
        if trajs:
            settings.seed, settings.version = cfg.seed * 7919 + it, it
            if colocate:
                engine.sleep()
                trainer.onload()
            train_metrics = trainer.update(trajs, settings)
            if colocate:
                trainer.offload()
                engine.wake_up()
            sampler.update(trajs)
            skipped, steps = train_metrics["train/skipped_steps"], train_metrics["train/steps"]
            consecutive_skips = consecutive_skips + steps if skipped == steps else train_metrics["train/trailing_skips"]
            if skipped:
                bar.write(f"iteration {it + 1}: {skipped:.0f} of {steps:.0f} optimizer steps skipped "
                          f"(non-finite loss or gradient; {consecutive_skips:.0f} in a row)")
        t3 = time.time()
        done = it + 1
        # 5. weight sync happens before the engine's next use (rollout or evaluation)
        row = {
            "iteration": it + 1,
            **rollout_row,
            **train_metrics,
            "reward/length_weight": w,
            "reward/verifier_errors": score_stats.verifier_errors,
            "reward/timeouts": score_stats.reward_timeouts,
            "time/rollout": t1 - t0,
            "time/reward": t2 - t1,
            "time/train": t3 - t2,
            "time/iteration": t3 - t0,
        }
        metrics_log.write(row)
        if consecutive_skips >= cfg.algorithm.max_consecutive_skips:
            good = latest_checkpoint(out)
            raise UserError(f"{consecutive_skips:.0f} optimizer steps in a row had a non-finite loss or gradient "
                            f"(iteration {it + 1}): stopping; last good checkpoint: {good or 'none yet'}")
        train_seconds += row["time/iteration"]
        out_of_time = bool(cfg.time_budget_minutes) and train_seconds >= 60 * cfg.time_budget_minutes
        bar.set_postfix(reward=f"{row.get('reward/mean', float('nan')):.3f}",
                        acc=f"{row.get('reward/accuracy', float('nan')):.3f}",
                        len=f"{row.get('rollout/len_mean', float('nan')):.0f}")
        if out_of_time and prefetched is not None:
            prefetched()  # let the rollout running ahead finish; its trajectories stay in the buffer
            prefetched = None
        if test_prompts and (evaluate_now or out_of_time):
            sync_engine()
            evals.append(run_eval(it + 1))
            bar.write(f"iteration {it + 1}: test accuracy {evals[-1]['accuracy']:.3f} "
                      f"mean tokens {evals[-1]['mean_tokens']:.1f}")
        if checkpoint_now or out_of_time:
            save_checkpoint(out, it + 1, trainer.current_model(), tok, run_state(), cfg.checkpoint_keep)
        if out_of_time:
            bar.write(f"time budget of {cfg.time_budget_minutes:g} min used up after {done} iterations")
            break
    if background:
        background.shutdown()
    bar.close()
    if also_greedy:
        sync_engine()
        greedy_evals.append(run_eval(done, greedy_params))
    metrics_log.close()
    eval_log.close()

    save_hf(trainer.current_model(), tok, out / "final", run_state())
    if cfg.distributed.backend == "ray":
        from k15rl.distributed.ray_backend import stop_workers

        stop_workers(engine, trainer)
    metrics = read_jsonl(out / "metrics.jsonl")
    plot_run(metrics, evals, out / "curves.png")
    summary = {
        "model": cfg.model.path,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "iterations": done,
        "train_time_s": train_seconds,
        "wall_time_s": time.time() - t_start,
        **run_summary(metrics, evals, greedy_evals),
    }
    if evals:
        summary.update({"eval_temperature": cfg.eval.temperature, "eval_prompts": len(test_prompts)})
    write_json_atomic(out / "summary.json", summary)
    log(json.dumps(summary, indent=2))
    return summary


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
    if greedy_evals:
        summary.update({
            "test_accuracy_greedy_before": greedy_evals[0]["accuracy"],
            "test_accuracy_greedy_after": greedy_evals[-1]["accuracy"],
        })
    return summary
