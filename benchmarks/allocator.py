"""glibc's malloc thresholds (k15rl/malloc.py): peak memory and step time of the same
training run with the shipped setting, glibc's default and the 1 MiB setting k15rl
shipped before, side by side.

Arms (one child process each, so that each peak is its own):

    shipped     k15rl/malloc.py as it is: mmap threshold 4 MiB, trim threshold 128 MiB
    default     glibc's own (return_freed_memory patched out): the mmap threshold rises
                to the largest block freed so far, freed heap space is kept
    1 MiB       mmap = trim = 1 MiB (set through glibc's MALLOC_*_ environment variables,
                which k15rl/malloc.py leaves standing)

Workloads: `demo` (the demo preset, built-in model) and `lora` / `full` (the smollm2
preset on models/smollm2 with activation checkpointing, no evaluation; LoRA r16,
alpha 32, lr 5e-5 as in benchmarks/lora.py, or all weights). A child reports its peak
resident set size (ru_maxrss) and, from OUT/metrics.jsonl, the mean `time/train` and
`time/rollout` of the iterations after the first (the first warms caches up) and the
last iteration's policy loss (the thresholds change where memory lives, not what is
computed: the losses agree across arms). Writes benchmarks/results/allocator.json
(docs/sharded_training.md renders it).

    python benchmarks/allocator.py                              # demo and lora, about 35 min
    python benchmarks/allocator.py --workloads demo,lora,full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from results import run_child, write_result

ARMS = {  # name -> environment added for the child (None: patch k15rl's setting out)
    "shipped": {},
    "default": None,
    "1 MiB": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)},
}
SMOLLM2 = ["data.test_levels=[]", "algorithm.activation_checkpointing=true"]
WORKLOADS = {  # name -> (preset, overrides without iterations)
    "demo": ("demo", ["data.test_levels=[]"]),
    "lora": ("smollm2", [*SMOLLM2, "model.lora.rank=16", "model.lora.alpha=32", "algorithm.lr=5e-5"]),
    "full": ("smollm2", [*SMOLLM2, "model.lora.rank=0"]),
}


def child(args: argparse.Namespace) -> None:
    """One arm of one workload, in this process; prints one JSON line."""
    import k15rl.trainer.run
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    if ARMS[args.arm] is None:
        k15rl.trainer.run.return_freed_memory = lambda: False  # glibc's default stays
    preset, overrides = WORKLOADS[args.workload]
    out = Path(args.out)
    t0 = time.time()
    train(load_config(preset, [f"out={out}", f"iterations={args.iterations}", *overrides]), overwrite=True,
          log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    later = rows[1:] or rows
    mean = lambda key: round(sum(r[key] for r in later) / len(later), 2)  # noqa: E731
    print(json.dumps({"arm": args.arm, "workload": args.workload,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "train_s": mean("time/train"), "rollout_s": mean("time/rollout"),
                      "last_loss": rows[-1].get("loss/policy"), "wall_s": round(time.time() - t0, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="demo,lora", help="comma-separated, of: " + ", ".join(WORKLOADS))
    ap.add_argument("--iterations", type=int, default=0, help="per run (default: demo 4, smollm2 3)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    workloads = args.workloads.split(",")
    if unknown := [w for w in workloads if w not in WORKLOADS]:
        sys.exit(f"--workloads: unknown {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="k15rl-allocator-") as tmp:
        for workload in workloads:
            iterations = args.iterations or (4 if workload == "demo" else 3)
            for arm, extra in ARMS.items():
                env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (extra or {})
                cmd = [sys.executable, __file__, "--child", "--arm", arm, "--workload", workload,
                       "--iterations", str(iterations), "--out", str(Path(tmp) / f"{workload}-{arm}")]
                r = run_child(cmd, f"{workload}/{arm}", env=env) | {"iterations": iterations}
                rows.append(r)
                print(f"{workload:5s} {arm:8s} peak RSS {r['peak_rss_mb']:7.0f} MB  train {r['train_s']:6.1f} s  "
                      f"rollout {r['rollout_s']:6.1f} s  loss {r['last_loss']}  ({r['wall_s']:.0f} s)", flush=True)
    for r in rows:  # against glibc's default of the same workload
        base = next(b for b in rows if b["workload"] == r["workload"] and b["arm"] == "default")
        r["peak_vs_default"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
        r["train_vs_default"] = round(r["train_s"] / base["train_s"], 3)
    write_result("allocator", {"workloads": {w: {"preset": WORKLOADS[w][0], "overrides": WORKLOADS[w][1]}
                                             for w in workloads}, "runs": rows}, wall_s=time.time() - t0)


if __name__ == "__main__":
    main()
