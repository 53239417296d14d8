"""The k1.5 RL loop (report §2.3, §2.6.1): one function that reads top to bottom.

    sample prompts -> rollout -> reward -> update -> weight sync -> log -> evaluate -> checkpoint

Every other part is a component with a small interface; this is the only place that
orchestrates them. The set-up and the state carried between iterations are in
`k15rl.trainer.run`; where the engine and the trainer run (one process, Ray workers) is
behind `run.workers` (k15rl/distributed/placement.py).
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Callable

from k15rl.config import TrainConfig
from k15rl.data import write_jsonl
from k15rl.errors import Interrupted, UserError, WorkerFailure
from k15rl.rewards import length_weight, score
from k15rl.rollout.collect import PartialRolloutResult, partial_rollout, put_back, release_complete
from k15rl.rollout.engine import SamplingParams
from k15rl.rollout.factory import sampling_params
from k15rl.trainer.card import run_card
from k15rl.trainer.checkpoint import latest_checkpoint, read_jsonl, save_checkpoint, save_hf, write_json_atomic
from k15rl.trainer.evaluate import evaluate, response_rows
from k15rl.trainer.plots import plot_run
from k15rl.trainer.run import Run, open_run, responses_path, rollout_metrics, run_summary


def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False, log: Callable[[str], None] = print,
          **inputs) -> dict:
    """Run RL as configured; returns the summary also written to OUT/summary.json.

    `resume`: continue the run in `cfg.out` from its newest complete checkpoint (model,
    sampler, replay buffer, RNG states, log positions); with none, start it over.
    `inputs`: a Python caller's reward_fn, train_dataset, eval_dataset (`open_run`).
    """
    from tqdm import tqdm

    with open_run(cfg, overwrite=overwrite, resume=resume, log=log, **inputs) as run:
        step = Step()  # where the loop is, for the one line of a WorkerFailure
        try:
            progress, workers = run.progress, run.workers
            if run.resumed_from is None and run.test_prompts:  # the policy before RL
                run.evals.append(run_eval(run, 0, run.eval_params))
                if run.greedy_params:
                    run.greedy_evals.append(run_eval(run, 0, run.greedy_params))
            pending = None  # rollout.overlap: the next iteration's rollout, running during this update
            bar = tqdm(range(progress.iteration, cfg.iterations), desc="rl", unit="it", dynamic_ncols=True,
                       initial=progress.iteration, total=cfg.iterations)
            for it in bar:
                t0 = time.time()
                step(it + 1, "rollout")
                # 1-2. prompts and rollout: K samples per prompt; groups whose members have all
                # finished come back. With rollout.overlap it was started during the last update.
                result, pending = (pending or start_rollout(run, it))(), None
                trajs = result.trajectories
                t1 = time.time()
                step(it + 1, "reward")
                # 3. rewards: verifier + length penalty after its warm-up (report §2.3.3, §2.3.5)
                w = length_weight(it, cfg.reward.length_weight, cfg.reward.length_warmup_iterations)
                scores = score(trajs, length_penalty_weight=w, repeat_penalty=cfg.reward.repeat_penalty,
                               rewards=run.router)
                rollout_row = {**rollout_metrics(result, run.buffer, t1 - t0), **workers.rollout_stats()}
                last = it + 1 == cfg.iterations
                evaluate_now = bool(run.test_prompts) and (
                    last or bool(cfg.eval.every and (it + 1) % cfg.eval.every == 0))
                checkpoint_now = last or bool(cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0)
                if run.background and not (last or evaluate_now or checkpoint_now):
                    step(it + 1, "rollout")
                    pending = start_rollout(run, it + 1)  # by pi_i, one version behind when it is trained on
                t2 = time.time()
                # 4. update: mirror-descent loss, optimizer reset each iteration (report §2.3.2)
                train_metrics: dict[str, float] = {}
                step(it + 1, "update")
                if trajs:
                    with workers.update_phase():
                        train_metrics = workers.trainer.update(trajs, version=it, seed=cfg.seed * 7919 + it)
                    run.sampler.update(trajs)
                    note_skipped_steps(run, train_metrics, it, bar.write)
                    note_logprob_gap(cfg.rollout.logprob_gap_warn, train_metrics, it, bar.write)
                t3 = time.time()
                progress.iteration = it + 1
                # 5. weight sync: the engine samples from the new weights next, unless a rollout
                # is already running on the old ones (rollout.overlap); then before the next one.
                step(it + 1, "weight sync")
                if pending is None:
                    workers.sync_weights(progress.iteration)
                t4 = time.time()
                # 6. log
                row = {
                    "iteration": it + 1,
                    **rollout_row,
                    **train_metrics,
                    "reward/length_weight": w,
                    "reward/verifier_errors": scores.verifier_errors,
                    "reward/timeouts": scores.reward_timeouts,
                    "reward/judge_no_verdict": scores.judge_no_verdict,
                    "time/rollout": t1 - t0,
                    "time/reward": t2 - t1,
                    "time/train": t3 - t2,
                    "time/weight_sync": t4 - t3,
                    "time/iteration": t4 - t0,
                }
                run.metrics_log.write(row)
                if progress.consecutive_skips >= cfg.algorithm.max_consecutive_skips:
                    raise UserError(f"{progress.consecutive_skips:.0f} optimizer steps in a row had a non-finite "
                                    f"loss or gradient (iteration {it + 1}): stopping; last good checkpoint: "
                                    f"{latest_checkpoint(run.out) or 'none yet'}")
                progress.train_seconds += row["time/iteration"]
                out_of_time = bool(cfg.time_budget_minutes) and progress.train_seconds >= 60 * cfg.time_budget_minutes
                bar.set_postfix(reward=f"{row.get('reward/mean', float('nan')):.3f}",
                                acc=f"{row.get('reward/accuracy', float('nan')):.3f}",
                                len=f"{row.get('rollout/len_mean', float('nan')):.0f}")
                if out_of_time and pending is not None:
                    step(it + 1, "rollout")
                    # the rollout running ahead finishes; its groups go back to the buffer, so the
                    # checkpoint keeps them and a resumed run trains on them first
                    put_back(run.buffer, pending())
                    pending = None
                # 7. evaluate on held-out prompts
                if run.test_prompts and (evaluate_now or out_of_time):
                    step(it + 1, "evaluation")
                    run.evals.append(run_eval(run, it + 1, run.eval_params))
                    bar.write(f"iteration {it + 1}: test accuracy {run.evals[-1]['accuracy']:.3f} "
                              f"mean tokens {run.evals[-1]['mean_tokens']:.1f}")
                # 8. checkpoint
                if checkpoint_now or out_of_time:
                    step(it + 1, "checkpoint")
                    save_checkpoint(run.out, it + 1, workers.trainer.current_model(), run.tokenizer, run.state_dict(),
                                    cfg.checkpoint_keep, optimizer=workers.trainer.optimizer_state())
                if out_of_time:
                    bar.write(f"time budget of {cfg.time_budget_minutes:g} min used up after {it + 1} iterations")
                    break
            bar.close()
            step(progress.iteration, "evaluation")
            if run.greedy_params:
                run.greedy_evals.append(run_eval(run, progress.iteration, run.greedy_params))
            step(progress.iteration, "final save")
            save_hf(workers.trainer.current_model(), run.tokenizer, run.out / "final", run.state_dict(),
                    card=run_card(run.cfg, progress.iteration, read_jsonl(run.out / "eval.jsonl")))
        except WorkerFailure as e:  # a worker died or hung: one line naming it, the step, and how to go on
            raise e.located(f" at {step}", resume_hint(run)) from None
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at {step}{resume_hint(run)}") from None
    return finish(run, log)


class Step:
    """Where the loop is (iteration, phase), for the line of a WorkerFailure."""

    def __init__(self):
        self.iteration, self.phase = 0, "evaluation"

    def __call__(self, iteration: int, phase: str) -> None:
        self.iteration, self.phase = iteration, phase

    def __str__(self) -> str:
        return f"iteration {self.iteration} ({self.phase})" if self.iteration else f"the start ({self.phase})"


def resume_hint(run: Run) -> str:
    last = latest_checkpoint(run.out)
    return (f"; resume with k15rl train --resume {run.out} "
            f"({f'from {last.name}' if last else 'no checkpoint yet: it starts over'})")


def start_rollout(run: Run, it: int) -> Callable[[], PartialRolloutResult]:
    """Sample prompts (report §2.3.4) and roll out with the engine's policy: continue the
    buffer's trajectories first, start K per new prompt, each at most segment_tokens new
    tokens (§2.6.2). Runs now, or in the background while the trainer updates
    (rollout.overlap); returns a function that gives its result."""
    r, progress = run.cfg.rollout, run.progress
    ahead = release_complete(run.tokenizer, run.buffer, progress.next_group)  # put back at a time-budget stop
    if ahead is not None:  # its prompts were sampled then: this iteration trains on it
        return lambda: ahead
    n_new = r.prompts_per_iteration
    if r.continue_first:  # cut trajectories take their rows first; new prompts fill the rest
        n_new = max(0, (r.prompts_per_iteration * r.k - run.buffer.num_unfinished()) // r.k)
    prompts = run.sampler.sample(n_new)  # called every iteration, even for 0, so schedules follow iterations
    params = sampling_params(r, run.stop_token_ids, seed=run.cfg.seed * 100003 + it)
    first, progress.next_group = progress.next_group, progress.next_group + len(prompts)
    run.workers.sync_weights(progress.iteration)  # pi_i: the newest weights (a no-op after step 5)
    job = partial(partial_rollout, run.workers.engine, run.tokenizer, run.buffer, prompts, r.k, params,
                  version=run.workers.version, segment_tokens=r.segment_tokens, max_tokens=r.max_new_tokens,
                  first_group=first, keep_kv=r.keep_kv, token_budget=r.iteration_tokens)
    if run.background:
        return run.background.submit(job).result
    result = job()
    return lambda: result


def note_skipped_steps(run: Run, train_metrics: dict[str, float], it: int, write: Callable[[str], None]) -> None:
    """Count optimizer steps skipped in a row for a non-finite loss or gradient (the loop
    stops at algorithm.max_consecutive_skips) and say when steps were skipped."""
    skipped, steps = train_metrics["train/skipped_steps"], train_metrics["train/steps"]
    p = run.progress
    p.consecutive_skips = p.consecutive_skips + steps if skipped == steps else train_metrics["train/trailing_skips"]
    if skipped:
        write(f"iteration {it + 1}: {skipped:.0f} of {steps:.0f} optimizer steps skipped "
              f"(non-finite loss or gradient; {p.consecutive_skips:.0f} in a row)")


def note_logprob_gap(bound: float, train_metrics: dict[str, float], it: int, write: Callable[[str], None]) -> None:
    """One line when the engine's recorded log-probs drift from the trainer's
    (rollout/logprob_gap_mean, computed by `PolicyTrainer.update`, above
    rollout.logprob_gap_warn nats; 0 = never). Here, in the loop, it reaches the user on
    every backend."""
    gap = train_metrics.get("rollout/logprob_gap_mean")
    if bound and gap is not None and gap > bound:
        write(f"iteration {it + 1}: warning: engine and trainer log-probs of the same tokens differ by "
              f"{gap:.4f} nats on average (max {train_metrics['rollout/logprob_gap_max']:.4f}), above "
              f"rollout.logprob_gap_warn={bound:g}: the engine samples from another policy than the trainer "
              f"scores (weights, dtype, temperature, chat template)")


def run_eval(run: Run, iteration: int, params: SamplingParams) -> dict:
    """Evaluate the newest policy on the test prompts; one row of eval.jsonl."""
    t0 = time.time()
    run.workers.sync_weights(run.progress.iteration)
    result, trajectories = evaluate(run.workers.engine, run.tokenizer, run.test_prompts, params,
                                    run.cfg.eval.samples_per_prompt, rewards=run.router,
                                    max_batch=run.cfg.eval.max_batch)
    if run.cfg.eval.save_responses:
        write_jsonl(responses_path(run.out, iteration, params.temperature), response_rows(trajectories))
    row = {"iteration": iteration, "temperature": params.temperature, **result, "time/eval": time.time() - t0}
    run.eval_log.write(row)
    return row


def finish(run: Run, log: Callable[[str], None]) -> dict:
    """The run's plot and summary.json (also returned and printed)."""
    metrics = read_jsonl(run.out / "metrics.jsonl")
    plot_run(metrics, run.evals, run.out / "curves.png")
    summary = {
        "model": run.cfg.model.path,
        "resumed_from": str(run.resumed_from) if run.resumed_from else None,
        "iterations": run.progress.iteration,
        "train_time_s": run.progress.train_seconds,
        "wall_time_s": time.time() - run.started,
        **run_summary(metrics, run.evals, run.greedy_evals),
    }
    if run.evals:
        summary.update({"eval_temperature": run.cfg.eval.temperature, "eval_prompts": len(run.test_prompts)})
    write_json_atomic(run.out / "summary.json", summary)
    log(json.dumps(summary, indent=2))
    return summary
