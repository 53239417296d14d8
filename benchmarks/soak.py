"""Soak: run the demo configuration for a fixed time and record the trainer's resident
memory; a leak shows as a positive slope.

The trainer runs as a child process (`k15rl train --config demo`, with enough iterations
to outlast the budget); its RSS (with its children) is read from /proc every few
seconds. Prints the RSS at start, middle and end, the least-squares slope over the
second half of the run (MB per hour), and writes a CSV and a PNG next to the run and
benchmarks/results/soak.json (docs/reliability.md renders it).

    python benchmarks/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results import write_result


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 2**20


def slope_mb_per_hour(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts (seconds), in MB/hour.

    >>> round(slope_mb_per_hour([0, 1800, 3600], [100, 110, 120]), 6)
    20.0
    """
    n = len(ts)
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    return 3600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--out", default="runs/soak")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the trainer (0: all cores)")
    args = ap.parse_args()
    out = Path(args.out)
    cmd = [sys.executable, "-m", "k15rl.cli", "train", "--config", "demo", "--overwrite", f"out={out}",
           "iterations=100000", f"time_budget_minutes={args.minutes}", "eval.every=10", "checkpoint_every=5",
           f"threads={args.threads}"]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "soak_train.log", "w")
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    t0, ts, ys = time.time(), [], []
    try:
        while child.poll() is None and time.time() - t0 < 60 * args.minutes + 600:
            ts.append(time.time() - t0)
            ys.append(rss_mb(child.pid))
            time.sleep(args.every)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        child.wait()
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak_rss.csv").write_text("seconds,rss_mb\n" + "".join(f"{t:.1f},{y:.1f}\n" for t, y in zip(ts, ys)))
    half = len(ts) // 2
    slope = slope_mb_per_hour(ts[half:], ys[half:])
    iterations = sum(1 for _ in open(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0
    print(f"soak: {ts[-1] / 60:.1f} min, {iterations} iterations, exit code {child.returncode}")
    print(f"RSS MB: start {ys[min(3, len(ys) - 1)]:.0f}, middle {ys[half]:.0f}, end {ys[-1]:.0f}, "
          f"max {max(ys):.0f}; slope over the second half {slope:+.1f} MB/hour")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t / 60 for t in ts], ys)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"soak: demo configuration, slope {slope:+.1f} MB/hour (second half)")
    fig.tight_layout()
    fig.savefig(out / "soak_rss.png", dpi=100)
    print(f"written {out / 'soak_rss.csv'} and {out / 'soak_rss.png'}")
    per_minute = {}  # the first sample of every minute: the docs' table
    for t, y in zip(ts, ys):
        per_minute.setdefault(int(t // 60), (t, y))
    write_result("soak", {
        "minutes": args.minutes, "every_s": args.every, "threads": args.threads, "iterations": iterations,
        "exit_code": child.returncode, "duration_min": ts[-1] / 60, "rss_mb_start": ys[min(3, len(ys) - 1)],
        "rss_mb_middle": ys[half], "rss_mb_end": ys[-1], "rss_mb_max": max(ys),
        "rss_mb_mean_after_first_minute": statistics.mean(y for t, y in zip(ts, ys) if t >= 60) if ts[-1] >= 60 else None,
        "slope_mb_per_hour_second_half": slope,
        "rss_mb_per_minute": [[m, round(y, 1)] for m, (_, y) in sorted(per_minute.items())],
    })


if __name__ == "__main__":
    main()
