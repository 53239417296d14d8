"""LoRA against full fine-tuning on SmolLM2-135M-Instruct (issue 17): peak memory and
test-accuracy gain of the same RL run, side by side.

Each arm is one `k15rl train` run (the arith run of docs/hf_models.md, longer) in a child
process of its own, so that each peak is its own: the child reports its peak resident
memory (ru_maxrss: the trainer's weights, the engine's copy, gradients, AdamW state,
activations, the weight sync's state dict) and its summary.json the greedy test-accuracy
gain. The arms differ only in model.lora.* and the learning rate (LoRA's adapters need a
larger one); everything else, the seed included, is the same.

    python benchmarks/lora.py                        # both arms; writes benchmarks/results/lora.json
    python benchmarks/lora.py --memory-only          # 2 iterations, no evaluation: peak memory only,
                                                     # OUT/report.json (no results file: no gain measured)

Goal (issue 17): LoRA at most 0.7x the full fine-tune's peak memory, still gaining at
least 5 points. SmolLM2 is converted first (docs/hf_models.md: `k15rl convert-gguf`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from results import write_result

GOAL_RSS_RATIO = 0.7
GOAL_GAIN_POINTS = 5.0
SYSTEM = "Solve the problem. End with a line 'answer: <number>'."


def arm_overrides(args: argparse.Namespace, arm: str, out: Path) -> list[str]:
    """The `k15rl train` overrides of one arm (`full` or `lora`)."""
    common = [
        f"out={out / arm}", f"model.path={args.model}", f"data.tasks=[{args.task}]",
        f"data.train_levels={args.levels}", f"data.test_levels={args.levels}", "data.train_per_level=500",
        f"data.test_per_level={args.test_per_level}", f"data.system_prompt={SYSTEM}",
        f"iterations={2 if args.memory_only else args.iterations}", f"rollout.k={args.k}",
        f"rollout.prompts_per_iteration={args.prompts}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"algorithm.micro_batch={args.micro_batch}", "eval.every=0", "eval.temperature=0", f"seed={args.seed}",
        f"threads={args.threads}",
    ]
    if args.memory_only:
        common += ["data.test_levels=[]"]  # no evaluation: memory only
    if arm == "full":
        return common + ["model.lora.rank=0", f"algorithm.lr={args.full_lr}"] + args.override
    return common + [f"model.lora.rank={args.rank}", f"model.lora.alpha={args.alpha}",
                     f"algorithm.lr={args.lora_lr}"] + args.override


def child(overrides: list[str], report: Path) -> None:
    """One arm, in this (child) process; its peak RSS goes to `report`."""
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    t0 = time.time()
    summary = train(load_config(None, overrides), overwrite=True, log=lambda s: None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    report.write_text(json.dumps({"peak_rss_mb": peak_mb, "wall_s": time.time() - t0, "summary": summary}))


def run_arm(args: argparse.Namespace, arm: str, out: Path) -> dict:
    (out / arm).mkdir(parents=True, exist_ok=True)
    report = out / f"{arm}.json"
    cmd = [sys.executable, __file__, "--child", str(report), "--", *arm_overrides(args, arm, out)]
    print(f"[{arm}] {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    r = json.loads(report.read_text())
    s = r["summary"]
    row = {"arm": arm, "peak_rss_mb": round(r["peak_rss_mb"], 1), "wall_s": round(r["wall_s"], 1),
           "iterations": s["iterations"]}
    if "test_accuracy_before" in s:
        row.update({"accuracy_before": s["test_accuracy_before"], "accuracy_after": s["test_accuracy_after"],
                    "gain_points": s["test_accuracy_gain_points"], "eval_prompts": s.get("eval_prompts")})
    print(f"[{arm}] {row}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a child process: one arm
        child(argv[3:], Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/smollm2")
    p.add_argument("--out", default="runs/lora_bench")
    p.add_argument("--task", default="arith")
    p.add_argument("--levels", default="[1]")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--prompts", type=int, default=8, help="rollout.prompts_per_iteration")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--test-per-level", type=int, default=100)
    p.add_argument("--full-lr", type=float, default=2e-6)
    p.add_argument("--lora-lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--memory-only", action="store_true", help="2 iterations, no evaluation; no results file")
    p.add_argument("--override", action="append", default=[], help="an extra key=value for both arms")
    args = p.parse_args(argv)
    if not Path(args.model).is_dir():
        print(f"{args.model} is not a folder: convert SmolLM2 first (docs/hf_models.md)", file=sys.stderr)
        return 2
    out = Path(args.out)
    arms = [run_arm(args, arm, out) for arm in ("full", "lora")]
    full, lora = arms
    payload = {
        "model": args.model, "task": args.task, "levels": args.levels, "iterations": lora["iterations"],
        "rollout": {"k": args.k, "prompts_per_iteration": args.prompts, "max_new_tokens": args.max_new_tokens},
        "lora": {"rank": args.rank, "alpha": args.alpha, "lr": args.lora_lr}, "full": {"lr": args.full_lr},
        "arms": arms,
        "peak_rss_ratio_lora_vs_full": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
        "goal": {"max_peak_rss_ratio": GOAL_RSS_RATIO, "min_gain_points": GOAL_GAIN_POINTS},
    }
    if args.memory_only:
        (out / "report.json").write_text(json.dumps(payload, indent=1))
        print(json.dumps(payload, indent=1))
        return 0
    payload["gain_points"] = lora["gain_points"]
    payload["goal_met"] = (payload["peak_rss_ratio_lora_vs_full"] <= GOAL_RSS_RATIO
                           and lora["gain_points"] >= GOAL_GAIN_POINTS)
    write_result("lora", payload)
    print(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
