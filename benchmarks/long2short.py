"""The long2short story on the built-in demo task (report §2.4, RECIPE §8), in one command.

From the demo's long-CoT RL model (`runs/demo/final`; `k15rl demo` is run first when it is
absent) it makes a shorter model with each method and compares them all:

    short-SFT            ingredient for merging: the warm-up model fine-tuned on short-CoT
                         traces of the train split (the warm-up traces without the plan,
                         check and mistake/redo lines: the picks and the answer)
    merge(long, warm-up) weight average of the long model and the warm-up (built-in) model
    merge(long, short)   weight average of the long model and the short-SFT model
    shortest-RS + SFT    8 samples per train question from the long model, the shortest
                         correct one kept, the long model fine-tuned on those
    DPO                  pairs from the same samples (chosen = shortest correct; rejected =
                         longer wrong, and correct >= 1.5x as long), DPO from the long model
    long2short RL        preset long2short_rl from the long model: length penalty from
                         iteration 0, max 128 new tokens instead of 200
    merge + long2short RL  the same preset from merge(long, short): the report starts
                         long2short RL from the checkpoint with the best accuracy/length
                         balance; the long model never samples a shorter chain of thought
                         on this task, the merge does

Every model answers the same held-out test prompts with the same sampling (temperature 1,
200 new tokens, the demo's evaluation); OUT/report.md|json and OUT/token_efficiency.png
hold the comparison, OUT/story.json the stage details, and
benchmarks/results/long2short.json the numbers that docs/long2short.md renders. Stages
whose output exists are reused unless --rerun.

    python benchmarks/long2short.py                       # ~15 min on 2 cores after the demo
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

from results import write_result


def short_trace(trace: str) -> str:
    """A warm-up trace of the sort task without its plan, check and mistake/redo lines.

    >>> short_trace("plan: 3 letters, ...\\n1: a\\n2: c\\nwait, b comes before c. redo.\\n2: b\\n3: c\\ncheck: ok\\nanswer: a b c")
    '1: a\\n2: b\\n3: c\\nanswer: a b c'
    """
    lines = trace.split("\n")
    keep = []
    for line in lines:
        if line.startswith(("plan:", "check:")):
            continue
        if line.startswith("wait,"):
            keep.pop()  # the wrong pick the redo replaces
            continue
        keep.append(line)
    return "\n".join(keep)


def short_sft_examples(n_per_level: int, seed: int) -> list[tuple[list[dict], str]]:
    from k15rl.tasks import Problem, get_task, make_prompts

    task, rng = get_task("sort"), random.Random(seed)
    out = []
    for p in make_prompts(task, "train", n_per_level, tuple(task.levels), seed + 1):
        trace = task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng)
        out.append(([{"role": r, "content": c} for r, c in p.messages], short_trace(trace)))
    rng.shuffle(out)
    return out


def sft(base: Path, examples, out: Path, lr: float, epochs: int, log) -> Path:
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.trainer.checkpoint import save_hf
    from k15rl.trainer.sft import SFTConfig, sft_train

    tok, model = load_tokenizer(base), load_model(base)
    losses = sft_train(model, tok, examples, SFTConfig(epochs=epochs, lr=lr, batch_size=16))
    log(f"  sft from {base}: {len(examples)} examples, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return save_hf(model, tok, out, {"sft": {"base": str(base), "examples": len(examples), "lr": lr,
                                             "epochs": epochs, "final_loss": losses[-1]}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", default="runs/demo/final", help="the long-CoT model (made by `k15rl demo` if absent)")
    p.add_argument("--out", default="runs/long2short")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--sample-prompts", type=int, default=256, help="train questions sampled n=8 times")
    p.add_argument("--short-sft-per-level", type=int, default=250)
    p.add_argument("--short-sft-lr", type=float, default=1e-3)
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--dpo-lr", type=float, default=1e-5)
    p.add_argument("--dpo-beta", type=float, default=0.1)
    p.add_argument("--rl-iterations", type=int, default=20)
    p.add_argument("--test-per-level", type=int, default=100, help="report: test prompts per level")
    p.add_argument("--no-rl-from-merge", action="store_true",
                   help="skip the second long2short RL arm, from merge(long, short) (about 5 minutes)")
    p.add_argument("--also-greedy", action="store_true", help="a second report with greedy decoding (OUT/greedy/)")
    p.add_argument("--rerun", action="store_true", help="redo stages whose output exists")
    args = p.parse_args(argv)

    import torch

    from k15rl.config import load_config
    from k15rl.data import build_prompts, write_jsonl
    from k15rl.long2short.dpo import (DPOConfig, cached_reference_logps, dpo_pair_rows, dpo_train, encode_pairs,
                                      load_pairs_jsonl, model_fingerprint, pairs_fingerprint)
    from k15rl.long2short.merge import merge_models
    from k15rl.long2short.report import evaluate_models, write_report
    from k15rl.long2short.shortest import sample_groups, shortest_rs_rows
    from k15rl.trainer.warmup import ensure_builtin
    from k15rl.models.loading import load_model, load_tokenizer, stop_token_ids
    from k15rl.rollout.engine import HFEngine, SamplingParams
    from k15rl.trainer.checkpoint import save_hf
    from k15rl.trainer.loop import train
    from k15rl.trainer.sft import load_sft_jsonl

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    story: dict = {"stages": {}}
    timings = story["stages"]

    def log(msg: str) -> None:
        print(msg, flush=True)

    def stage(name: str, path: Path, fn) -> Path:
        t0 = time.time()
        if path.exists() and not args.rerun:
            log(f"[{name}] reusing {path}")
        else:
            log(f"[{name}] ...")
            fn()
        timings[name] = {"path": str(path), "seconds": round(time.time() - t0, 1)}
        return path

    long = Path(args.long)
    if not (long / "config.json").is_file():
        log(f"{long} is absent: running `k15rl demo` first (about 9 minutes)")
        train(load_config("demo", [f"out={long.parent}"]), overwrite=True)
    warm = ensure_builtin(log=log)
    demo_cfg = load_config("demo", [f"data.test_per_level={args.test_per_level}"])

    # 1. short-SFT model (the short-CoT model that merging needs) and the two merges
    short = stage("short-SFT", out / "short_sft",
                  lambda: sft(warm, short_sft_examples(args.short_sft_per_level, 0), out / "short_sft", args.short_sft_lr, 2, log))
    merge_warm = stage("merge(long, warm-up)", out / "merge_long_warmup",
                       lambda: merge_models(long, warm, out / "merge_long_warmup", 0.5, overwrite=True))
    merge_short = stage("merge(long, short)", out / "merge_long_short",
                        lambda: merge_models(long, short, out / "merge_long_short", 0.5, overwrite=True))

    # 2. n = 8 samples per train question from the long model: shortest-RS data and DPO pairs
    def sample_long() -> None:
        train_prompts, _ = build_prompts(demo_cfg)
        prompts = random.Random(0).sample(train_prompts, args.sample_prompts)
        tok, model = load_tokenizer(long), load_model(long)
        params = SamplingParams(max_new_tokens=200, temperature=1.0, stop_token_ids=stop_token_ids(tok, model), seed=1)
        groups = sample_groups(HFEngine(model, tok, 256), tok, prompts, 8, params, desc="sampling long model")
        rows, st = shortest_rs_rows(groups)
        pairs, pst = dpo_pair_rows(groups, ratio=1.5)
        log(f"  shortest-rs: {st.line()}\n  dpo-pairs: {pst.line()}")
        write_jsonl(out / "pairs.jsonl", pairs)
        write_jsonl(out / "shortest_rs.jsonl", rows)  # written last: marks the stage done
        texts = [x.text for g in groups for x in g.samples]
        structure = {  # what a shorter chain of thought could leave out, as sampled
            "samples": len(texts),
            "frac_with_plan_line": sum(t.startswith("plan:") for t in texts) / len(texts),
            "frac_with_check_line": sum("\ncheck:" in t for t in texts) / len(texts),
            "redo_lines_per_sample": sum(t.count("\nwait,") for t in texts) / len(texts),
            "correct_without_plan_or_check": sum(x.correct and not (x.text.startswith("plan:") and "\ncheck:" in x.text)
                                                 for g in groups for x in g.samples),
        }
        log(f"  long model's samples: {structure}")
        story["sampling"] = {"shortest_rs": vars(st), "dpo_pairs": vars(pst), "structure": structure}
        (out / "sampling.json").write_text(json.dumps(story["sampling"], indent=2))

    stage("sampling (n=8)", out / "shortest_rs.jsonl", sample_long)
    story["sampling"] = json.loads((out / "sampling.json").read_text())
    srs = stage("shortest-RS + SFT", out / "shortest_rs_sft",
                lambda: sft(long, load_sft_jsonl(out / "shortest_rs.jsonl"), out / "shortest_rs_sft",
                            args.sft_lr, 2, log))

    def dpo() -> None:
        tok, model = load_tokenizer(long), load_model(long)
        rows = encode_pairs(tok, load_pairs_jsonl(out / "pairs.jsonl"), 1024)
        ref = cached_reference_logps(model, rows, tok.pad_token_id, out / "pairs.jsonl.ref_logps.pt",
                                     key=f"{model_fingerprint(long)}:{pairs_fingerprint(rows)}")
        cfg = DPOConfig(beta=args.dpo_beta, lr=args.dpo_lr, epochs=1, batch_size=8)
        hist = dpo_train(model, tok, rows, ref, cfg)
        log(f"  dpo: {len(rows)} pairs, loss {hist[0]['dpo/loss']:.3f} -> {hist[-1]['dpo/loss']:.3f}, "
            f"margin {hist[-1]['dpo/margin']:.2f}")
        save_hf(model, tok, out / "dpo", {"dpo": vars(cfg) | {"pairs": len(rows), "last": hist[-1]}})

    dpo_dir = stage("DPO", out / "dpo", dpo)

    # 3. long2short RL: the preset, from the long model (and from the merge)
    def rl(start: Path, run: Path) -> Path:
        cfg = load_config("long2short_rl", [f"model.path={start}", f"out={run}", f"iterations={args.rl_iterations}",
                                            "data.test_per_level=25"])
        return stage(f"long2short RL from {start.name}", run / "final", lambda: train(cfg, overwrite=True))

    rl_long = rl(long, out / "rl_from_long")
    rl_merge = None if args.no_rl_from_merge else rl(merge_short, out / "rl_from_merge")

    # 4. the report: every model on the same test prompts, the demo's evaluation settings
    _, test = build_prompts(demo_cfg)
    models = [("long (demo RL)", long), ("warm-up (built-in)", warm), ("short-SFT", short),
              ("merge(long, warm-up)", merge_warm), ("merge(long, short)", merge_short),
              ("shortest-RS + SFT", srs), ("DPO", dpo_dir), ("long2short RL", rl_long)]
    if rl_merge:
        models.append(("merge + long2short RL", rl_merge))
    t0 = time.time()
    results = evaluate_models([(label, str(path)) for label, path in models], test, demo_cfg)
    timings["report"] = {"seconds": round(time.time() - t0, 1)}
    settings = {"prompts": len(test), "samples_per_prompt": 1, "temperature": demo_cfg.eval.temperature,
                "max_new_tokens": demo_cfg.rollout.max_new_tokens, "data": "sort test split (demo preset)"}
    files = write_report(results, out, settings)
    long_r, verdicts = results[0], []
    story["goal"] = {}
    for r in results:
        if "long2short RL" not in r.label:
            continue
        cut, drop = 1 - r.mean_tokens / long_r.mean_tokens, 100 * (long_r.accuracy - r.accuracy)
        met = cut >= 0.30 and drop <= 3.0
        story["goal"][r.label] = {"token_cut": cut, "accuracy_drop_points": drop, "met": met}
        verdicts.append(f"{r.label} vs long: {100 * cut:.1f}% fewer tokens, accuracy {-drop:+.1f} points "
                        f"(goal: >= 30% fewer, within 3 points: {'met' if met else 'not met'})")
    if args.also_greedy:
        greedy_cfg = load_config("demo", [f"data.test_per_level={args.test_per_level}", "eval.temperature=0"])
        greedy = evaluate_models([(label, str(path)) for label, path in models], test, greedy_cfg)
        write_report(greedy, out / "greedy", settings | {"temperature": 0.0})
        story["greedy"] = {r.label: {"accuracy": r.accuracy, "mean_tokens": r.mean_tokens} for r in greedy}
    story["wall_time_s"] = time.time() - t_start
    (out / "story.json").write_text(json.dumps(story, indent=2, default=str))
    write_result("long2short", {"settings": settings, "rl_iterations": args.rl_iterations,
                                "sample_prompts": args.sample_prompts, "models": [asdict(r) for r in results],
                                **json.loads(json.dumps(story, default=str))})
    log((out / "report.md").read_text())
    log("\n".join(verdicts))
    log(f"written: {files['md']}, {files['json']}, {files['png']}, {out / 'story.json'}; "
        f"{story['wall_time_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
