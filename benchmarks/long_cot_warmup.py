"""The long-CoT workload's starting point: held-out accuracy of the warmed-up
`builtin-long` model per level of `subset_sum`, greedy and sampled (T = 1), before any RL.

This is the model every long-CoT benchmark (length_penalty.py, ...) starts from, so it
shows where RL has room: a level the warm-up already solves leaves nothing to learn, one
it never solves gives no reward. Each temperature is one `k15rl eval` (the CLI's own
evaluation, test split); the build (the first time only: a warm-up of about half an hour
on 2 cores) is timed apart. Writes benchmarks/results/long_cot_warmup.json
(docs/long_cot.md renders it).

    python benchmarks/long_cot_warmup.py                    # 30 test prompts per level
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin-long")
    ap.add_argument("--test-per-level", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=1900)
    ap.add_argument("--temperatures", default="0,1")
    args = ap.parse_args()
    from k15rl.tasks import get_task
    from k15rl.trainer.resolve import resolve_model_path

    t0 = time.time()
    folder = resolve_model_path(args.model, "--model")  # builds a built-in spec once
    build_s = time.time() - t0
    levels = list(get_task("subset_sum").levels)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for temp in [float(x) for x in args.temperatures.split(",")]:
            out = Path(tmp) / f"eval_{temp}.json"
            t1 = time.time()
            cmd = [sys.executable, "-m", "k15rl.cli", "eval", "--model", str(folder), "data.tasks=[subset_sum]",
                   f"data.test_levels=[{','.join(map(str, levels))}]", "data.train_per_level=10",
                   f"data.test_per_level={args.test_per_level}", f"eval.temperature={temp}",
                   f"rollout.max_new_tokens={args.max_new_tokens}", "--output", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"k15rl eval at T={temp}: exit code {proc.returncode}\n{proc.stderr[-3000:]}")
            r = json.loads(out.read_text())
            runs.append({"temperature": temp, "accuracy": r["accuracy"], "accuracy_ci95": r["accuracy_ci95"],
                         "mean_tokens": r["mean_tokens"], "n": r["n"], "per_level": r["per_level"],
                         "eval_s": round(time.time() - t1, 1)})
            print(f"T={temp:g}: accuracy {r['accuracy']:.3f} +/- {r['accuracy_ci95']:.3f}, "
                  + ", ".join(f"L{lv} {v['accuracy']:.2f}" for lv, v in r["per_level"].items()), flush=True)
    spec = json.loads((folder / "k15rl_builtin.json").read_text()) if (folder / "k15rl_builtin.json").exists() else None
    write_result("long_cot_warmup", {"model": args.model, "spec": spec, "build_s": round(build_s, 1),
                                     "test_per_level": args.test_per_level, "max_new_tokens": args.max_new_tokens,
                                     "runs": runs}, wall_s=time.time() - t0)


if __name__ == "__main__":
    main()
