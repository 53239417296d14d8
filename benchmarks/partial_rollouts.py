"""Partial rollouts (report §2.6.2) vs whole rollouts, side by side in one run.

Part 1, speed: the built-in model on the heavy-tailed workload (every trajectory ends at
a Pareto-distributed length, 16 to 896 tokens; see workloads.py), K = 4 samples of 16
prompts per iteration, one 64-slot engine. "whole" generates every trajectory to its
end within the iteration (rollout.segment_tokens = 0); "partial" gives each trajectory
at most --segment tokens per iteration and continues cut ones from the replay buffer
first. Both run until the same number of trajectories has been trained, and the
partial run then drains its replay buffer (no new prompts) so that all the work it
started is counted; the weights stay fixed, so only scheduling differs. Prints wall time per iteration and per
finished trajectory, and the ratio.

Part 2, learning (--learn-minutes > 0): the demo configuration trained for the same
wall-time budget (evaluations excluded) with and without partial rollouts; prints test
accuracy at the end of each.

    python benchmarks/partial_rollouts.py                     # part 1, about 3 minutes
    python benchmarks/partial_rollouts.py --learn-minutes 4   # and part 2, about 12 more
    python benchmarks/partial_rollouts.py --trajectories 0 --learn-minutes 4   # part 2 only

Part 1 writes benchmarks/results/partial_rollouts.json, part 2
benchmarks/results/partial_rollouts_learn.json; docs/rollout.md renders both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import write_result  # noqa: E402
from workloads import ForcedLengthEngine, pareto_length, sort_prompts  # noqa: E402

from k15rl.trainer.warmup import ensure_builtin  # noqa: E402
from k15rl.models.loading import load_model, load_tokenizer  # noqa: E402
from k15rl.rollout.collect import partial_rollout  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.rollout.replay import ReplayBuffer  # noqa: E402


def speed(engine, tok, prompts, k, per_iter, segment, max_tokens, target_trained):
    """Iterations until `target_trained` trajectories are trained, then (partial) no new
    prompts until the replay buffer is empty, so every trajectory started is finished and
    counted. Returns (seconds, iterations, trained)."""
    buffer, group, trained, it, pos = ReplayBuffer(), 0, 0, 0, 0
    t0 = time.perf_counter()
    steady = None  # (seconds, trained) when the target was first reached, before draining
    while trained < target_trained or len(buffer):
        n_new = max(0, (per_iter * k - buffer.num_unfinished()) // k) if trained < target_trained else 0
        batch, pos = prompts[pos:pos + n_new], pos + n_new
        res = partial_rollout(engine, tok, buffer, batch, k, SamplingParams(max_tokens, seed=it), version=it,
                              segment_tokens=segment, max_tokens=max_tokens, first_group=group)
        group, trained, it = res.next_group, trained + len(res.trajectories), it + 1
        if steady is None and trained >= target_trained:
            steady = (time.perf_counter() - t0, trained, it)
    return time.perf_counter() - t0, it, trained, steady


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def learn(minutes: float, segment: int, out: str) -> dict:
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    cfg = load_config("demo", [f"out={out}", f"time_budget_minutes={minutes}", f"rollout.segment_tokens={segment}",
                               "iterations=1000", "eval.every=0", "data.test_per_level=50"])
    return train(cfg, overwrite=True, log=lambda s: None)


def speed_part(args: argparse.Namespace) -> None:
    """Part 1: whole vs partial rollouts on the heavy-tailed workload, fixed weights."""
    path = ensure_builtin()
    model, tok = load_model(path), load_tokenizer(path)
    k, per_iter, max_tokens = 4, 16, 896
    prompts = sort_prompts(4 * args.trajectories)
    engine = ForcedLengthEngine(HFEngine(model, tok, max_batch=per_iter * k), lambda rid: pareto_length(rid, seed=1))
    print(f"speed: heavy-tailed lengths (Pareto 1.2, 16-896), k={k} x {per_iter} prompts per iteration, "
          f"{args.trajectories} trajectories trained per mode, {torch.get_num_threads()} threads")
    print(f"{'mode':22s} {'iterations':>10s} {'seconds':>8s} {'s/iteration':>11s} {'ms/trajectory':>13s} "
          f"{'speed-up':>8s} {'before drain':>13s}")
    rows = {}
    modes = (("whole", 0), (f"partial (segment {args.segment})", args.segment))
    for name, seg in modes:
        rows[name] = speed(engine, tok, prompts, k, per_iter, seg, max_tokens, args.trajectories)
    base = rows["whole"][0] / rows["whole"][2]
    base_steady = rows["whole"][3][0] / rows["whole"][3][1]
    measured = []
    for (name, seg), (secs, its, trained, (s_secs, s_trained, s_its)) in zip(modes, rows.values()):
        per, per_steady = secs / trained, s_secs / s_trained
        print(f"{name:22s} {its:10d} {secs:8.1f} {secs / its:11.2f} {1000 * per:13.1f} {base / per:7.2f}x "
              f"{base_steady / per_steady:12.2f}x")
        measured.append({"mode": name, "segment_tokens": seg, "iterations": its, "seconds": secs, "trained": trained,
                         "s_per_iteration": secs / its, "ms_per_trajectory": 1000 * per, "speed_up": base / per,
                         "speed_up_before_drain": base_steady / per_steady})
    print("ms/trajectory counts all work, including draining the replay buffer at the end; "
          "'before drain': at the moment the target was reached (unfinished work left in the buffer)")
    write_result("partial_rollouts", {"k": k, "prompts_per_iteration": per_iter, "max_tokens": max_tokens,
                                      "trajectories": args.trajectories, "threads": torch.get_num_threads(),
                                      "modes": measured})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segment", type=int, default=64, help="rollout.segment_tokens of the partial runs")
    ap.add_argument("--trajectories", type=int, default=512, help="trajectories trained per mode (0: no part 1)")
    ap.add_argument("--learn-minutes", type=float, default=0.0)
    ap.add_argument("--learn-segment", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trajectories > 0:
        speed_part(args)
    if args.learn_minutes > 0:
        print(f"\nlearning: demo configuration, {args.learn_minutes:g} min of iterations each (evaluations excluded)")
        print(f"{'mode':22s} {'iterations':>10s} {'test acc before':>15s} {'after':>7s} {'mean tokens':>11s}")
        learned = []
        for name, seg in (("whole", 0), (f"partial (segment {args.learn_segment})", args.learn_segment)):
            out = f"runs/bench_partial_{seg}"
            s = learn(args.learn_minutes, seg, out)
            print(f"{name:22s} {s['iterations']:10d} {100 * s['test_accuracy_before']:14.1f}% "
                  f"{100 * s['test_accuracy_after']:6.1f}% {s['test_mean_tokens_after']:11.1f}")
            metrics = read_metrics(Path(out) / "metrics.jsonl")
            segments = sum(m.get(f"rollout/num_{o}", 0) for m in metrics for o in ("stop", "cut", "repeat", "max_len"))
            learned.append({"mode": name, "segment_tokens": seg, "iterations": s["iterations"],
                            "trained": sum(m.get("rollout/trained", 0) for m in metrics),
                            "segments_cut_frac": sum(m.get("rollout/num_cut", 0) for m in metrics) / max(segments, 1),
                            "test_accuracy_before": s["test_accuracy_before"],
                            "test_accuracy_after": s["test_accuracy_after"],
                            "test_mean_tokens_after": s["test_mean_tokens_after"]})
        write_result("partial_rollouts_learn", {"minutes": args.learn_minutes, "test_per_level": 50,
                                                "modes": learned})


if __name__ == "__main__":
    main()
