"""Does overlapping rollout and training pay on this machine? (`rollout.overlap`)

Runs the demo configuration for a few iterations three ways, one after the other in
this process: sequential (all cores for each phase in turn), overlapped with all
cores per thread, and overlapped with the torch threads halved (each phase gets its
own cores). Prints seconds per iteration (evaluations excluded) and the ratio, and writes
them to benchmarks/results/overlap.json (docs/rollout.md renders it).

    python benchmarks/overlap.py --iterations 8      # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse

import torch
from results import write_result

from k15rl.config import load_config
from k15rl.trainer.loop import train


def run(iterations: int, overlap: bool, threads: int) -> float:
    cfg = load_config("demo", [f"out=runs/bench_overlap_{int(overlap)}_{threads}", f"iterations={iterations}",
                               f"rollout.overlap={str(overlap).lower()}", f"threads={threads}", "eval.every=0",
                               "data.test_per_level=5", "eval.temperature=0"])
    summary = train(cfg, overwrite=True, log=lambda s: None)
    return summary["train_time_s"] / summary["iterations"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=8)
    args = ap.parse_args()
    cores = torch.get_num_threads()
    rows = [("sequential", False, cores), ("overlap", True, cores), (f"overlap, {max(1, cores // 2)} thread(s)", True,
                                                                      max(1, cores // 2))]
    results = [(name, threads, run(args.iterations, ov, threads)) for name, ov, threads in rows]
    base = results[0][2]
    print(f"demo configuration, {args.iterations} iterations each")
    print(f"{'mode':26s} {'torch threads':>13s} {'s/iteration':>11s} {'speed-up':>8s}")
    for name, threads, secs in results:
        print(f"{name:26s} {threads:13d} {secs:11.2f} {base / secs:7.2f}x")
    write_result("overlap", {"iterations": args.iterations, "cores": cores, "modes": [
        {"mode": name, "overlap": ov, "threads": threads, "s_per_iteration": secs, "speed_up": base / secs}
        for (name, ov, _), (_, threads, secs) in zip(rows, results)]})


if __name__ == "__main__":
    main()
