"""Code sandbox throughput: programs graded per second through the pool.

Three workloads, each a program with one stdin/stdout test: trivial programs (read two
numbers, print the sum), the same with five tests, and programs that loop forever and
run into the limit (1 s CPU, 1.5 s wall). Prints programs/s for each number of workers
and writes them to benchmarks/results/sandbox_throughput.json (docs/code_rewards.md).

    python benchmarks/sandbox_throughput.py --n 100 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

from tqdm import tqdm

from results import write_result

from k15rl.verifiers.sandbox import Limits, StdioTest, isolation_mode
from k15rl.verifiers.sandbox_pool import CodeJob, SandboxPool

TRIVIAL = "a, b = map(int, input().split())\nprint(a + b)\n"
LOOP = "while True:\n    pass\n"


def bench(jobs: list[CodeJob], workers: int, limits: Limits, label: str) -> dict:
    t0 = time.monotonic()
    with SandboxPool(workers, limits) as pool:
        futures = [pool.submit(j) for j in jobs]
        reasons = collections.Counter(f.result().reason for f in tqdm(futures, desc=f"{label} x{workers}",
                                                                       unit="prog", leave=False))
    wall = time.monotonic() - t0
    rate = len(jobs) / wall
    print(f"{label:<22} workers={workers}: {rate:6.1f} programs/s ({len(jobs)} in {wall:.1f} s; {dict(reasons)})")
    return {"workload": label, "workers": workers, "programs": len(jobs), "seconds": wall,
            "programs_per_s": rate, "reasons": dict(reasons)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="programs per trivial workload")
    ap.add_argument("--n-timeout", type=int, default=8, help="programs in the timing-out workload")
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    limits = Limits(cpu_s=1, wall_s=1.5)
    print(f"isolation: {isolation_mode()}")
    one = [CodeJob(TRIVIAL, tests=(StdioTest(f"{i} 1", str(i + 1)),)) for i in range(args.n)]
    five = [CodeJob(TRIVIAL, tests=tuple(StdioTest(f"{i} {k}", str(i + k)) for k in range(5))) for i in range(args.n)]
    loops = [CodeJob(LOOP, tests=(StdioTest("", "x"),)) for _ in range(args.n_timeout)]
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        rows.append(bench(one, w, limits, "trivial, 1 test"))
        rows.append(bench(five, w, limits, "trivial, 5 tests"))
        rows.append(bench(loops, w, limits, "timeout (1 s CPU)"))
    write_result("sandbox_throughput", {"isolation": isolation_mode(), "limits": {"cpu_s": limits.cpu_s,
                                        "wall_s": limits.wall_s}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
