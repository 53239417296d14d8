"""The demo's update: one padded pass per micro-batch (before) against passes of rows of
similar length that keep their graphs (`update.length_passes`, shipped), side by side.

Arms (the same code but for one function):

    one pass        how k15rl updated before: `length_passes` replaced by the single pass
                    `shard_passes` gives (every row of a 64-row micro-batch padded to its
                    longest) and each row's prompt run with it (`shares_prompts` off)
    length passes   k15rl as it is: rows of similar length in passes that keep their
                    graphs, each distinct prompt run once per pass

The rollout is the same code in both (its prefill runs each distinct prompt once).

Two measurements, each arm in a child process of its own:

1. The same trajectories (iteration 1 of the demo: its rollout of 32 prompts x 8 samples,
   scored): `PolicyTrainer.update` timed after one warm-up update (best of `--repeats`), and
   what it computes: the loss of every optimizer step, and the weights after the update,
   compared between the arms (the change only regroups rows, so both agree to float
   rounding).
2. The demo itself (`k15rl demo` preset, `--iterations`, seed 0, its held-out evaluations at
   the start and the end): mean `time/train` and `time/rollout` per iteration and the
   update's share of the iteration, and the held-out accuracy after RL of both arms
   (sampled, 600 prompts; greedy too).

Writes benchmarks/results/update_speed.json (rendered in docs/design.md by `make docs`).

    python benchmarks/update_speed.py                     # about 25 min on 2 cores
    python benchmarks/update_speed.py --iterations 4      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

from results import run_child, write_result

ARMS = ("one pass", "length passes")


def _patch(arm: str) -> None:
    """The arm's update: as shipped, or with every fitting micro-batch as one pass."""
    import k15rl.trainer.update as update

    if arm == "one pass":
        update.length_passes = lambda tokens, shard, pass_tokens=0: update.shard_passes(tokens, 10**9, shard)
        update.shares_prompts = lambda model: False


def child_same(args: argparse.Namespace) -> None:
    """Part 1 in this process: the update on the saved trajectories; prints one JSON line
    and saves the weights after the update to OUT/weights.pt."""
    import torch

    from k15rl.config import load_config
    from k15rl.trainer.run import open_run

    _patch(args.arm)
    cfg = load_config("demo", ["data.test_levels=[]", f"out={args.out}"])
    trajs = pickle.loads(Path(args.trajectories).read_bytes())
    with open_run(cfg, overwrite=True, log=lambda s: None) as run:
        trainer = run.workers.trainer
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        times, losses = [], []
        for k in range(args.repeats + 1):  # the first warms caches up
            trainer.model.load_state_dict(start)
            t0 = time.perf_counter()
            metrics = trainer.update(trajs, version=0, seed=0)
            times.append(time.perf_counter() - t0)
            losses.append(metrics["loss/policy"])
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, Path(args.out) / "weights.pt")
        torch.save(start, Path(args.out) / "start.pt")
    print(json.dumps({"arm": args.arm, "update_s": min(times[1:]), "update_s_all": times[1:],
                      "loss_policy": losses[-1], "grad_norm": metrics["train/grad_norm"]}), flush=True)


def child_demo(args: argparse.Namespace) -> None:
    """Part 2 in this process: the demo preset for --iterations; prints one JSON line."""
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    _patch(args.arm)
    out = Path(args.out)
    t0 = time.time()
    train(load_config("demo", [f"out={out}", f"iterations={args.iterations}", "seed=0",
                               f"eval.every={args.iterations}"]), overwrite=True, log=lambda s: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "time/train" in r]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines() if x.strip()]
    sampled = [e for e in evals if e["temperature"] > 0]
    greedy = [e for e in evals if e["temperature"] == 0]
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print(json.dumps({
        "arm": args.arm, "iterations": len(rows), "train_s": mean("time/train"), "rollout_s": mean("time/rollout"),
        "iteration_s": mean("time/iteration"), "update_share": mean("time/train") / mean("time/iteration"),
        "rollout_share": mean("time/rollout") / mean("time/iteration"),
        "accuracy_before": sampled[0]["accuracy"], "accuracy_after": sampled[-1]["accuracy"],
        "greedy_before": greedy[0]["accuracy"] if greedy else None,
        "greedy_after": greedy[-1]["accuracy"] if greedy else None, "n_test": sampled[-1]["n"],
        "reward_curve": [round(r["reward/mean"], 4) for r in rows],
        "first_iteration_loss": rows[0].get("loss/policy"), "wall_s": time.time() - t0,
    }), flush=True)


def rollout_once(out: Path) -> Path:
    """Iteration 1's trajectories of the demo (its rollout, scored), pickled to OUT/trajs.pkl."""
    from k15rl.config import load_config
    from k15rl.rewards import score
    from k15rl.trainer.loop import start_rollout
    from k15rl.trainer.run import open_run

    cfg = load_config("demo", ["data.test_levels=[]", f"out={out / 'rollout'}"])
    with open_run(cfg, overwrite=True, log=lambda s: None) as run:
        trajs = start_rollout(run, 0)().trajectories
        score(trajs, length_penalty_weight=0.0, repeat_penalty=cfg.reward.repeat_penalty, rewards=run.router)
    path = out / "trajs.pkl"
    path.write_bytes(pickle.dumps(trajs))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=40, help="demo iterations per arm (the preset's 40)")
    ap.add_argument("--repeats", type=int, default=3, help="timed updates per arm on the same trajectories")
    for hidden in ("--child", "--arm", "--out", "--trajectories"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_same(args) if args.child == "same" else child_demo(args)
    import torch

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="k15rl-update-speed-") as tmp:
        tmp = Path(tmp)
        trajs = rollout_once(tmp)
        lengths = [len(t.response_ids) for t in pickle.loads(trajs.read_bytes())]
        same = {}
        for arm in ARMS:
            out = tmp / f"same-{arm.replace(' ', '_')}"
            same[arm] = run_child([sys.executable, __file__, "--child", "same", "--arm", arm, "--out", str(out),
                                   "--trajectories", str(trajs), "--repeats", str(args.repeats)], arm)
            print(f"same trajectories, {arm:13s}: update {same[arm]['update_s']:.2f} s, "
                  f"loss {same[arm]['loss_policy']:.6f}", flush=True)
        w = {arm: torch.load(tmp / f"same-{arm.replace(' ', '_')}" / "weights.pt") for arm in ARMS}
        w0 = torch.load(tmp / "same-one_pass" / "start.pt")
        moved = sum(float((w["one pass"][k] - w0[k]).pow(2).sum()) for k in w0) ** 0.5
        apart = sum(float((w["length passes"][k] - w["one pass"][k]).pow(2).sum()) for k in w0) ** 0.5
        max_abs = max(float((w["length passes"][k] - w["one pass"][k]).abs().max()) for k in w0)
        demo = {}
        for arm in ARMS:
            out = tmp / f"demo-{arm.replace(' ', '_')}"
            demo[arm] = run_child([sys.executable, __file__, "--child", "demo", "--arm", arm, "--out", str(out),
                                   "--iterations", str(args.iterations)], arm)
            d = demo[arm]
            print(f"demo, {arm:13s}: update {d['train_s']:.2f} s ({100 * d['update_share']:.0f}%), rollout "
                  f"{d['rollout_s']:.2f} s ({100 * d['rollout_share']:.0f}%), accuracy {d['accuracy_before']:.3f} "
                  f"-> {d['accuracy_after']:.3f} ({d['wall_s'] / 60:.1f} min)", flush=True)
    a, b = same["one pass"], same["length passes"]
    da, db = demo["one pass"], demo["length passes"]
    result = {
        "preset": "demo", "seed": 0, "iterations": args.iterations,
        "same_trajectories": {
            "rows": len(lengths), "response_tokens_mean": sum(lengths) / len(lengths),
            "response_tokens_max": max(lengths), "arms": same,
            "speedup": a["update_s"] / b["update_s"],
            "loss_abs_diff": abs(a["loss_policy"] - b["loss_policy"]),
            "weights_apart_over_moved": apart / moved, "weights_max_abs_diff": max_abs,
        },
        "demo": {"arms": demo, "train_s_ratio": da["train_s"] / db["train_s"],
                 "iteration_s_ratio": da["iteration_s"] / db["iteration_s"],
                 "accuracy_after_delta_points": 100 * (db["accuracy_after"] - da["accuracy_after"])},
        "goal": "the update's share of an iteration below the rollout's, results unchanged",
        "goal_met": db["update_share"] < db["rollout_share"],
    }
    write_result("update_speed", result, wall_s=time.time() - t0)
    print(f"update {result['same_trajectories']['speedup']:.2f}x faster on the same trajectories (weights "
          f"{apart / moved:.1e} of their move apart); demo: update {da['train_s']:.1f} -> {db['train_s']:.1f} s "
          f"per iteration, share {100 * da['update_share']:.0f}% -> {100 * db['update_share']:.0f}% "
          f"(rollout {100 * db['rollout_share']:.0f}%); accuracy after {da['accuracy_after']:.3f} vs "
          f"{db['accuracy_after']:.3f} ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
