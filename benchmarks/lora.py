"""LoRA against full fine-tuning on SmolLM2-135M-Instruct: peak memory and
test-accuracy gain of the same RL run, side by side.

Each arm is one `k15rl train --config smollm2` run (k15rl/configs/smollm2.yaml, the run
benchmarks/smollm2_rl.py measures) in a child process of its own, so that each peak is
its own: the child reports its peak resident memory (ru_maxrss: the trainer's weights,
the engine's copy, gradients, AdamW state, activations, the weight sync's state dict)
and its summary.json the held-out accuracy gain (the preset's evaluation). The arms
differ only in model.lora.* and the learning rate (the adapters want a larger one); both
run with activation checkpointing and evaluate 16 prompts at a time (BOTH below);
everything else, the seed included, is the preset's.

    python benchmarks/lora.py                        # both arms; writes benchmarks/results/lora.json
    python benchmarks/lora.py --memory-only          # 2 iterations, no evaluation: peak memory only,
                                                     # OUT/report.json (no results file: no gain measured)

Goal: LoRA at most 0.7x the full fine-tune's peak memory, still gaining at
least 5 points. SmolLM2 is converted first (docs/hf_models.md: `k15rl convert-gguf`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from results import write_result

GOAL_RSS_RATIO = 0.7
GOAL_GAIN_POINTS = 5.0
# Both arms: activation checkpointing, so that activations (the same in both arms) do not
# hide what LoRA saves (gradients and AdamW state of all weights). Without it the update's
# peak is set by the activations of a micro-batch in both arms (measured: 0.74x at
# micro_batch 2, about 1.0x at 8 on this model).
# And evaluations that decode 16 test prompts at a time (eval.max_batch): the preset's
# evaluation decodes 64 distinct 129-token prompts at once, a KV cache (fp32, 46 KB a token)
# plus temporaries that added 0.9-1.3 GB over the process's resident memory in both arms
# (one evaluation alone: +1,339 MB at 64, +367 MB at 16, 58 s against 80 s), which set the
# LoRA arm's peak (lora.json at commit ec6fcd8: 0.774) and again would hide what LoRA saves.
BOTH = ["algorithm.activation_checkpointing=true", "eval.max_batch=16"]


def arm_overrides(args: argparse.Namespace, arm: str, out: Path) -> list[str]:
    """The `k15rl train --config <preset>` overrides of one arm (`full` or `lora`)."""
    common = [f"out={out / arm}", *BOTH, *args.override]
    if args.memory_only:
        common += ["iterations=2", "data.test_levels=[]"]  # no evaluation: memory only
    elif arm == "lora" and args.iterations:
        common += [f"iterations={args.iterations}"]
    if arm == "full":
        if args.full_iterations and not args.memory_only:
            common += [f"iterations={args.full_iterations}"]
        return common + ["model.lora.rank=0"]  # the preset's own learning rate
    return common + [f"model.lora.rank={args.rank}", f"model.lora.alpha={args.alpha}", f"algorithm.lr={args.lora_lr}"]


def child(overrides: list[str], report: Path) -> None:
    """One arm, in this (child) process; its peak RSS goes to `report`."""
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    cfg = load_config(overrides[0], overrides[1:])
    by_iteration: dict[int, float] = {}  # iterations logged -> peak RSS so far (MB)
    done = threading.Event()

    def watch() -> None:  # once a second: how far the run is, and the peak so far
        metrics = Path(cfg.out) / "metrics.jsonl"
        while not done.wait(1.0):
            n = metrics.read_text().count("\n") if metrics.exists() else 0
            by_iteration[n] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.time()
    summary = train(cfg, overwrite=True, log=lambda s: None)
    done.set()
    watcher.join()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.write_text(json.dumps({"peak_rss_mb": peak_mb, "wall_s": time.time() - t0, "summary": summary,
                                  "peak_rss_mb_by_iteration": by_iteration}))


def run_arm(args: argparse.Namespace, arm: str, out: Path) -> dict:
    (out / arm).mkdir(parents=True, exist_ok=True)
    report = out / f"{arm}.json"
    cmd = [sys.executable, __file__, "--child", str(report), "--", args.config, *arm_overrides(args, arm, out)]
    print(f"[{arm}] {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    r = json.loads(report.read_text())
    s = r["summary"]
    row = {"arm": arm, "peak_rss_mb": round(r["peak_rss_mb"], 1), "wall_s": round(r["wall_s"], 1),
           "iterations": s["iterations"],
           # N -> the peak so far while N iterations had been logged (0: the first evaluation and iteration)
           "peak_rss_mb_by_iteration": {k: round(v, 1) for k, v in sorted(r["peak_rss_mb_by_iteration"].items(),
                                                                           key=lambda kv: int(kv[0]))}}
    metrics = [json.loads(x) for x in (out / arm / "metrics.jsonl").read_text().splitlines() if x.strip()]
    for phase in ("rollout", "train"):  # mean seconds per iteration of each phase
        row[f"{phase}_s_mean"] = round(sum(m[f"time/{phase}"] for m in metrics) / max(len(metrics), 1), 1)
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
    p.add_argument("--config", default="smollm2", help="the run both arms make (a preset or YAML file)")
    p.add_argument("--out", default="runs/lora_bench")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--lora-lr", type=float, default=5e-5, help="LoRA's learning rate (the full arm: the preset's)")
    p.add_argument("--iterations", type=int, default=0, help="the LoRA arm's iterations (0: the preset's)")
    p.add_argument("--full-iterations", type=int, default=0,
                   help="the full arm's iterations (0: the preset's): its peak is read over these only "
                        "(the LoRA arm's peak_rss_mb_by_iteration shows how early a run reaches its peak); "
                        "the full fine-tune's gain is benchmarks/smollm2_rl.py's to measure")
    p.add_argument("--memory-only", action="store_true", help="2 iterations, no evaluation; no results file")
    p.add_argument("--override", action="append", default=[], help="an extra key=value for both arms")
    args = p.parse_args(argv)
    from k15rl.config import load_config

    cfg = load_config(args.config, arm_overrides(args, "full", Path(args.out)))
    if not Path(cfg.model.path).is_dir():
        print(f"{cfg.model.path} is not a folder: convert SmolLM2 first (docs/hf_models.md)", file=sys.stderr)
        return 2
    out = Path(args.out)
    arms = [run_arm(args, arm, out) for arm in ("full", "lora")]
    full, lora = arms
    payload = {
        "config": args.config, "model": cfg.model.path, "tasks": cfg.data.tasks, "iterations": lora["iterations"],
        "both_arms": BOTH + args.override,
        "lora": {"rank": args.rank, "alpha": args.alpha, "lr": args.lora_lr},
        "full": {"lr": cfg.algorithm.lr, "iterations": full["iterations"]},
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
