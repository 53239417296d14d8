"""vLLM in the training loop against vLLM alone, on the same prompts.

Arm `loop`: `k15rl train --config smollm2 rollout.engine=vllm` for a few iterations
(no evaluation), in a child process. Every call the loop makes to the engine's
`generate` is recorded: the requests (prompt and prefix token ids, budgets), the
sampling parameters, its wall time and the tokens it returned. Its rollout phase
(`time/rollout` in metrics.jsonl: building requests, the calls, partial-rollout
bookkeeping) gives the loop's own `rollout/tokens_per_s`.

Arm `alone`: a fresh child process that starts one `VLLMEngine` on the same model
folder with the same `rollout.vllm` settings and context length, and replays the
recorded calls, in order, with the same requests and parameters: nothing else runs
in that process (no trainer, no optimizer state, no weight syncs).

Both arms skip their first call (vLLM's first batch warms up its kernels). The
ratio is loop / alone, in generated tokens per second; the goal is at least 0.9.
Weights differ: the loop's engine samples from the updated policy after the first
iteration, the alone arm from the model folder; tokens/s normalises by the number of
tokens each produced. Run with vLLM's environment (docs/vllm.md):

    .venv-vllm/bin/python benchmarks/vllm_in_loop.py            # writes benchmarks/results/vllm_in_loop.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_result  # noqa: E402

GOAL_RATIO = 0.9


def child_loop(record: Path, config: str, overrides: list[str]) -> None:
    """Arm `loop`: the training run, with every engine call recorded to `record`."""
    from k15rl.config import load_config
    from k15rl.rollout import vllm_engine
    from k15rl.trainer.loop import train

    calls: list[dict] = []
    started: dict = {}
    init, generate = vllm_engine.VLLMEngine.__init__, vllm_engine.VLLMEngine.generate

    def recording_init(self, path, tokenizer, cfg, *, max_model_len, seed=0):
        started.update(path=str(path), max_model_len=max_model_len, seed=seed, vllm=asdict(cfg))
        init(self, path, tokenizer, cfg, max_model_len=max_model_len, seed=seed)

    def recording_generate(self, requests, params):
        t0 = time.perf_counter()
        segments = generate(self, requests, params)
        calls.append({"seconds": time.perf_counter() - t0, "tokens": sum(len(s.token_ids) for s in segments),
                      "requests": [asdict(r) for r in requests], "params": asdict(params)})
        return segments

    vllm_engine.VLLMEngine.__init__ = recording_init
    vllm_engine.VLLMEngine.generate = recording_generate
    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    train(cfg, overwrite=True, log=lambda s: None)
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    record.write_text(json.dumps({"engine": started, "calls": calls, "metrics": rows,
                                  "wall_s": time.perf_counter() - t0}))


def child_alone(record: Path, report: Path) -> None:
    """Arm `alone`: one engine, the recorded calls replayed, nothing else in the process."""
    from k15rl.config import VllmConfig
    from k15rl.models.loading import load_tokenizer
    from k15rl.rollout.engine import SamplingParams
    from k15rl.rollout.vllm_engine import VLLMEngine
    from k15rl.types import GenerationRequest

    rec = json.loads(record.read_text())
    e = rec["engine"]
    engine = VLLMEngine(e["path"], load_tokenizer(e["path"]), VllmConfig(**e["vllm"]),
                        max_model_len=e["max_model_len"], seed=e["seed"])
    calls = []
    for c in rec["calls"]:
        requests = [GenerationRequest(**r) for r in c["requests"]]
        t0 = time.perf_counter()
        segments = engine.generate(requests, SamplingParams(**c["params"]))
        calls.append({"seconds": time.perf_counter() - t0, "tokens": sum(len(s.token_ids) for s in segments)})
    engine.close()
    report.write_text(json.dumps({"calls": calls}))


def tokens_per_s(calls: list[dict]) -> float:
    rest = calls[1:]  # the first call warms vLLM up
    return sum(c["tokens"] for c in rest) / max(sum(c["seconds"] for c in rest), 1e-9)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-loop"]:
        child_loop(Path(argv[1]), argv[3], argv[4:])
        return 0
    if argv[:1] == ["--child-alone"]:
        child_alone(Path(argv[1]), Path(argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2")
    p.add_argument("--out", default="runs/vllm_in_loop")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm is not installed in this environment: run it with .venv-vllm/bin/python (docs/vllm.md)",
              file=sys.stderr)
        return 2
    from k15rl.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"out={out / 'run'}", "rollout.engine=vllm", f"iterations={args.iterations}",
                 "data.test_levels=[]", *args.override]
    cfg = load_config(args.config, overrides)
    if not Path(cfg.model.path).is_dir():
        print(f"{cfg.model.path} is not a folder: convert SmolLM2 first (docs/hf_models.md)", file=sys.stderr)
        return 2
    record, report = out / "loop.json", out / "alone.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child-loop", str(record), "--", args.config, *overrides], check=True)
    t_loop = time.perf_counter() - t0
    subprocess.run([sys.executable, __file__, "--child-alone", str(record), str(report)], check=True)
    t_alone = time.perf_counter() - t0 - t_loop
    loop, alone = json.loads(record.read_text()), json.loads(report.read_text())
    rows = loop["metrics"][1:]  # the loop's own rollout phase, without the first iteration
    phase_tokens = sum(r["rollout/tokens_per_s"] * r["time/rollout"] for r in rows)
    phase_seconds = sum(r["time/rollout"] for r in rows)
    payload = {
        "config": args.config, "model": cfg.model.path, "iterations": args.iterations, "overrides": overrides,
        "calls": len(loop["calls"]),
        "tokens_per_s": {
            "loop_generate": round(tokens_per_s(loop["calls"]), 2),
            "loop_rollout_phase": round(phase_tokens / max(phase_seconds, 1e-9), 2),
            "alone": round(tokens_per_s(alone["calls"]), 2),
        },
        "tokens": {"loop": sum(c["tokens"] for c in loop["calls"][1:]),
                   "alone": sum(c["tokens"] for c in alone["calls"][1:])},
        "seconds_per_iteration": {k: round(sum(r[f"time/{k}"] for r in rows) / max(len(rows), 1), 2)
                                  for k in ("rollout", "reward", "train", "weight_sync", "iteration")},
        "arm_wall_s": {"loop": round(t_loop, 1), "alone": round(t_alone, 1)},
    }
    tps = payload["tokens_per_s"]
    payload["ratio_loop_vs_alone"] = round(tps["loop_generate"] / tps["alone"], 3)
    payload["ratio_rollout_phase_vs_alone"] = round(tps["loop_rollout_phase"] / tps["alone"], 3)
    payload["goal"] = {"min_ratio": GOAL_RATIO}
    payload["goal_met"] = payload["ratio_rollout_phase_vs_alone"] >= GOAL_RATIO
    write_result("vllm_in_loop", payload)
    print(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
