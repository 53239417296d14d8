"""The README's demo table: `k15rl demo` for several seeds, one after the other.

Each seed S runs `k15rl demo --out runs/demo_sS --overwrite seed=S` in a child process
(the demo preset: the built-in model, 40 iterations of k1.5 RL on letter sorting, 600
held-out prompts evaluated before and after, sampled at T = 1 and greedy), then its
`summary.json` is read: sampled and greedy test accuracy before and after, per level,
mean response tokens, wall time. Writes benchmarks/results/demo.json, which README.md's
demo table is rendered from (`make docs`).

    python benchmarks/demo.py                  # seeds 0 1 2: about 25 minutes on 2 cores, model cached
    python benchmarks/demo.py --seeds 0        # one seed
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from results import write_result

SUMMARY_KEYS = ("test_accuracy_before", "test_accuracy_after", "test_accuracy_gain_points",
                "test_accuracy_greedy_before", "test_accuracy_greedy_after", "test_mean_tokens_before",
                "test_mean_tokens_after", "test_per_level_before", "test_per_level_after", "iterations",
                "eval_temperature", "eval_prompts", "train_time_s", "wall_time_s")


def run_seed(seed: int, out: Path, extra: list[str]) -> dict:
    """One `k15rl demo` run in a child process; returns the summary's numbers and the child's wall time."""
    cmd = [sys.executable, "-m", "k15rl.cli", "demo", "--out", str(out), "--overwrite", f"seed={seed}", *extra]
    print(f"seed {seed}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"seed": seed, "out": str(out), "process_wall_s": time.time() - t0,
            **{k: summary[k] for k in SUMMARY_KEYS if k in summary}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs", help="run folders go to OUT/demo_s<S>")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, repeatable (the README's table: none)")
    args = ap.parse_args(argv)
    runs = [run_seed(s, Path(args.out) / f"demo_s{s}", args.override) for s in args.seeds]
    for r in runs:
        print(f"seed {r['seed']}: sampled {100 * r['test_accuracy_before']:.1f}% -> {100 * r['test_accuracy_after']:.1f}%, "
              f"greedy {100 * r.get('test_accuracy_greedy_before', float('nan')):.1f}% -> "
              f"{100 * r.get('test_accuracy_greedy_after', float('nan')):.1f}%, {r['wall_time_s'] / 60:.1f} min")
    write_result("demo", {"seeds": args.seeds, "overrides": args.override, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
