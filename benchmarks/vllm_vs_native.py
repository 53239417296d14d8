"""Rollout throughput: the vLLM engine (rollout.engine=vllm) vs the native HFEngine.

Same model, prompts, sampling settings (T = 1, top_p 1) and batch width (--slots: the
native engine's max_batch, vLLM's max_num_seqs), run side by side in one process, on
the two workloads of benchmarks/rollout_throughput.py (see workloads.py):

    natural       sort questions of levels 1-6, stop at EOS, with the trainer's
                  default repeat detection (rollout.repeat_ngram=20)
    heavy-tailed  each trajectory ends after a Pareto-drawn length (16-896 tokens),
                  whatever the model samples (ForcedLengthEngine around each engine)

With --vision: the built-in vision-language model (docs/vision.md) on its four visual
tasks, levels 1-5, each prompt with its image (vLLM gets it as multi_modal_data; the
native engine computes its features at prefill).

Prints generated tokens/s of each engine and the ratio vllm / native, whatever it is.
Engine start-up is reported separately and not counted. Writes
benchmarks/results/<--results-name>.json (docs/vllm.md renders it). Needs vllm (docs/vllm.md):

    .venv-vllm/bin/python benchmarks/vllm_vs_native.py                       # built-in model
    .venv-vllm/bin/python benchmarks/vllm_vs_native.py --model DIR --requests 32 --max-new-tokens 64
    .venv-vllm/bin/python benchmarks/vllm_vs_native.py --vision      # -> vllm_vs_native_vision.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import write_result  # noqa: E402
from workloads import ForcedLengthEngine, pareto_length, sort_prompts, visual_prompts  # noqa: E402

from k15rl.config import VllmConfig  # noqa: E402
from k15rl.trainer.warmup import ensure_builtin  # noqa: E402
from k15rl.models.loading import encode_prompt, load_model, load_tokenizer, stop_token_ids  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a Hugging Face model folder (default: the built-in model)")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--slots", type=int, default=64, help="sequences decoded together, both engines")
    ap.add_argument("--max-new-tokens", type=int, default=200, help="natural workload's maximum")
    ap.add_argument("--max-tail", type=int, default=896, help="heavy-tailed workload's longest trajectory")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each engine (interleaved); the median is shown")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both engines")
    ap.add_argument("--compile", action="store_true", help="vLLM without enforce_eager (slower start)")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0, help="vLLM CPU KV cache")
    ap.add_argument("--workloads", default="natural,heavy-tailed")
    ap.add_argument("--vision", action="store_true", help="the built-in VLM (or --model's) on the visual tasks")
    ap.add_argument("--results-name", default=None,
                    help="writes benchmarks/results/NAME.json (default: vllm_vs_native, or vllm_vs_native_vision)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        path = Path(args.model)
    else:
        from k15rl.models.builtin import BUILTIN_SPECS

        path = ensure_builtin(BUILTIN_SPECS["builtin-vision"]) if args.vision else ensure_builtin()
    from k15rl.rollout.vllm_engine import VLLMEngine

    tok = load_tokenizer(path)
    model = load_model(path, args.dtype)
    prompts = visual_prompts(args.requests) if args.vision else sort_prompts(args.requests)
    prompt_ids = [encode_prompt(tok, p.messages, p.images) for p in prompts]
    longest = max(len(p) for p in prompt_ids)
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", 2048)
    tail = min(args.max_tail, positions - longest - 1)
    targets = [pareto_length(f"r{i}", seed=0, high=tail) for i in range(len(prompts))]
    stops = stop_token_ids(tok, model)
    native = HFEngine(model, tok, max_batch=args.slots)
    t0 = time.perf_counter()
    vcfg = VllmConfig(dtype=args.dtype, enforce_eager=not args.compile, kv_cache_gb=args.kv_cache_gb,
                      max_num_seqs=args.slots)
    fast = VLLMEngine(path, tok, vcfg, max_model_len=min(positions, longest + max(tail, args.max_new_tokens) + 1))
    start = time.perf_counter() - t0
    reqs = [GenerationRequest(ids, id=f"r{i}", images=p.images) for i, (ids, p) in enumerate(zip(prompt_ids, prompts))]
    natural = SamplingParams(args.max_new_tokens, temperature=1.0, stop_token_ids=stops, repeat_ngram=20,
                             repeat_times=4, repeat_min_tokens=32)
    workloads = {
        "natural": lambda e: e.generate(reqs, natural),
        "heavy-tailed": lambda e: ForcedLengthEngine(e, lambda rid: targets[int(rid[1:])]).generate(
            reqs, SamplingParams(tail, temperature=1.0)),
    }
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for e in (native, fast):  # warm-up: first calls pay one-off costs
        e.generate(reqs[:4], SamplingParams(8, stop_token_ids=stops))
    import vllm as vllm_pkg

    print(f"model {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.dtype}), "
          f"{args.requests} requests, {args.slots} slots, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}; vllm {vllm_pkg.__version__} ({'compiled' if args.compile else 'eager'}), "
          f"engine start {start:.1f} s; heavy-tailed targets: mean {sum(targets) / len(targets):.0f}, "
          f"max {max(targets)} tokens")
    print(f"{'workload':14s} {'engine':8s} {'tokens':>8s} {'seconds':>8s} {'tok/s':>8s} {'vllm/native':>12s}")
    measured = []
    for name in chosen:
        run = workloads[name]
        times: dict[str, list[float]] = {}
        tokens: dict[str, int] = {}
        for _ in range(args.repeats):
            for label, engine in (("native", native), ("vllm", fast)):
                t0 = time.perf_counter()
                segs = run(engine)
                times.setdefault(label, []).append(time.perf_counter() - t0)
                tokens[label] = sum(len(s.token_ids) for s in segs)
        rate = {k: tokens[k] / statistics.median(v) for k, v in times.items()}
        for label in ("native", "vllm"):
            ratio = f"{rate['vllm'] / rate['native']:11.2f}x" if label == "vllm" else ""
            print(f"{name:14s} {label:8s} {tokens[label]:8d} {statistics.median(times[label]):8.1f} "
                  f"{rate[label]:8.0f} {ratio:>12s}")
        measured.append({"workload": name, "vllm_over_native": rate["vllm"] / rate["native"], "engines": [
            {"engine": k, "tokens": tokens[k], "seconds": statistics.median(times[k]), "tokens_per_s": rate[k]}
            for k in ("native", "vllm")]})
    fast.close()
    write_result(args.results_name or ("vllm_vs_native_vision" if args.vision else "vllm_vs_native"), {
        "model": Path(args.model).name if args.model else ("builtin-vision" if args.vision else "builtin"),
        "prompts": "visual tasks, levels 1-5, one image each" if args.vision else "sort, levels 1-6",
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6, "dtype": args.dtype,
        "requests": args.requests, "slots": args.slots, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "vllm": vllm_pkg.__version__, "compiled": args.compile, "engine_start_s": start,
        "heavy_tailed_targets": {"mean": sum(targets) / len(targets), "max": max(targets)}, "workloads": measured})


if __name__ == "__main__":
    main()
