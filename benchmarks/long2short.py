"""Long2short (report §2.4, RECIPE §8) on the long-CoT workload, in one command.

From the long-CoT model (`builtin-long`: warmed up on `subset_sum` search traces that
overthink, BASE in long_cot.py; `--long DIR` for another checkpoint of it) each method makes
a shorter model, and every model answers the same held-out prompts:

    short-SFT            ingredient of the merge: the warm-up model fine-tuned on the
                         concise traces of the train split (`warmup_trace(concise=True)`:
                         the same search, no searching on and no re-checks)
    merge                0.5 x long + 0.5 x short-SFT (weight averaging)
    shortest-RS          8 samples (T = 1) per train question from the long model, the
                         shortest correct one kept, the long model fine-tuned on those
    DPO                  pairs from the same samples (chosen = shortest correct; rejected =
                         wrong and longer, or correct and >= 1.5x as long), DPO from the long model
    long2short RL        k1.5 RL with the length penalty on from the first iteration and a
                         smaller rollout budget (--rl-max-new-tokens), from the merged model:
                         the report starts long2short RL, after the long-CoT RL, from the
                         model "that offers the best balance between performance and token
                         efficiency", and of the long model and the merge that is the merge
                         (--rl-base long starts it from the long model)

Shortest-RS, DPO and long2short RL run once per seed (their own samples); short-SFT and
the merge are deterministic given the traces and run once. Every model is evaluated with
one sample (T = 1, up to --max-new-tokens) per test prompt, the same prompts and seed for
all. Per method: token reduction (fraction of the long model's mean response tokens
removed) and accuracy change in points, mean over seeds with a 95% t-interval. Writes
OUT/report.md|json, OUT/token_efficiency.png (accuracy against mean tokens, Figure 7) and
benchmarks/results/long2short.json. Stages whose output exists are reused unless --rerun.

    python benchmarks/long2short.py                       # the benchmark (about 55 min on 2 cores)
    python benchmarks/long2short.py --seeds 0 --levels 1 --test-per-level 2 --sample-prompts 2 \\
        --short-sft-per-level 4 --rl-iterations 1 --rl-prompts 2 --out runs/l2s_smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from long_cot import BASE, run_arm
from results import write_result
from stats import t_interval

METHODS = ("merge", "shortest_rs", "dpo", "l2s_rl")
LABELS = {"merge": "merge(long, short-SFT)", "shortest_rs": "shortest-RS + SFT", "dpo": "DPO",
          "l2s_rl": "long2short RL"}


def concise_examples(levels: list[int], n_per_level: int, seed: int) -> list[tuple[list[dict], str]]:
    """(messages, concise trace) pairs of the `subset_sum` train split: the short-CoT data."""
    from k15rl.tasks import Problem, get_task, make_prompts

    task, rng = get_task("subset_sum"), random.Random(seed)
    out = []
    for p in make_prompts(task, "train", n_per_level, tuple(levels), seed + 1):
        trace = task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng, concise=True)
        out.append(([{"role": r, "content": c} for r, c in p.messages], trace))
    rng.shuffle(out)
    return out


def sft(base: Path, examples, out: Path, lr: float, epochs: int, seed: int, log) -> None:
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.trainer.checkpoint import save_hf
    from k15rl.trainer.sft import SFTConfig, sft_train

    tok, model = load_tokenizer(base), load_model(base)
    cfg = SFTConfig(epochs=epochs, lr=lr, batch_size=8, max_length=2048, seed=seed)
    losses = sft_train(model, tok, examples, cfg)
    log(f"  sft from {base}: {len(examples)} examples, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    save_hf(model, tok, out, {"sft": {"base": str(base), "examples": len(examples), "lr": lr, "epochs": epochs,
                                      "final_loss": losses[-1]}})


def summarize_method(rows: list[dict]) -> dict:
    """Mean token reduction and accuracy change over seeds (one row per seed), 95% t-intervals."""
    cut = [r["token_reduction"] for r in rows]
    delta = [r["accuracy_delta_points"] for r in rows]
    eff = [r["correct_per_1k_tokens"] for r in rows]
    return {"token_reduction": statistics.mean(cut), "token_reduction_ci95": t_interval(cut),
            "accuracy_delta_points": statistics.mean(delta), "accuracy_delta_ci95": t_interval(delta),
            "correct_per_1k_tokens": statistics.mean(eff), "per_seed": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", default="builtin-long", help="the long-CoT model (a built-in name or a folder)")
    p.add_argument("--out", default="runs/long2short")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--levels", default="1,2,3")
    p.add_argument("--test-per-level", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=1900, help="the evaluation's (and sampling's) budget")
    p.add_argument("--sample-prompts", type=int, default=64, help="train questions sampled 8 times, per seed")
    p.add_argument("--short-sft-per-level", type=int, default=200)
    p.add_argument("--short-sft-lr", type=float, default=3e-4)
    p.add_argument("--sft-lr", type=float, default=1e-4)
    p.add_argument("--dpo-lr", type=float, default=1e-5)
    p.add_argument("--dpo-beta", type=float, default=0.1)
    p.add_argument("--rl-base", choices=("long", "merge"), default="merge", help="long2short RL's start model")
    p.add_argument("--rl-iterations", type=int, default=16)
    p.add_argument("--rl-prompts", type=int, default=8, help="prompts per RL iteration (8 samples each)")
    p.add_argument("--rl-lr", type=float, default=2e-5)
    p.add_argument("--rl-minibatches", type=int, default=4, help="optimizer steps per RL iteration")
    p.add_argument("--rl-length-weight", type=float, default=1.0)
    p.add_argument("--rl-max-new-tokens", type=int, default=320, help="long2short RL's rollout budget")
    p.add_argument("--rerun", action="store_true", help="redo stages whose output exists")
    args = p.parse_args(argv)

    from k15rl.config import load_config
    from k15rl.data import build_prompts, write_jsonl
    from k15rl.long2short.dpo import (DPOConfig, cached_reference_logps, dpo_pair_rows, dpo_train, encode_pairs,
                                      load_pairs_jsonl, model_fingerprint, pairs_fingerprint)
    from k15rl.long2short.merge import merge_models
    from k15rl.long2short.report import evaluate_models, write_report
    from k15rl.long2short.shortest import sample_groups, shortest_rs_rows
    from k15rl.models.loading import load_model, load_tokenizer, stop_token_ids
    from k15rl.rollout.engine import HFEngine, SamplingParams
    from k15rl.trainer.checkpoint import save_hf
    from k15rl.trainer.resolve import resolve_model_path
    from k15rl.trainer.sft import load_sft_jsonl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    seeds = [int(s) for s in args.seeds.split(",")]
    levels = [int(x) for x in args.levels.split(",")]
    stages: dict[str, dict] = {}
    story: dict = {"stages": stages, "sampling": {}}

    def log(msg: str) -> None:
        print(msg, flush=True)

    def stage(name: str, path: Path, fn) -> Path:
        t0 = time.time()
        if path.exists() and not args.rerun:
            log(f"[{name}] reusing {path}")
        else:
            log(f"[{name}] ...")
            fn()
        stages[name] = {"path": str(path), "seconds": round(time.time() - t0, 1)}
        return path

    long = resolve_model_path(args.long, "--long", log=log)
    warm = resolve_model_path("builtin-long", "builtin-long", log=log)
    # Every model here descends from builtin-long, so none trains on its warm-up's prompts
    data = [f"data.train_levels=[{args.levels}]", f"data.test_levels=[{args.levels}]",
            f"data.test_per_level={args.test_per_level}", "data.train_per_level=150",
            "data.exclude_warmup=builtin-long"]
    eval_cfg = load_config(None, [*BASE, f"model.path={long}", *data, f"rollout.max_new_tokens={args.max_new_tokens}",
                                  f"eval.max_new_tokens={args.max_new_tokens}"])
    train_prompts, test = build_prompts(eval_cfg, log=lambda s: None)

    # 1. short-SFT (the merge's short model) and the merge
    short = stage("short-SFT", out / "short_sft", lambda: sft(
        warm, concise_examples(levels, args.short_sft_per_level, 0), out / "short_sft", args.short_sft_lr, 2, 0, log))
    merged = stage("merge", out / "merge", lambda: merge_models(long, short, out / "merge", 0.5, overwrite=True))
    models = [("long", long), ("short-SFT", short), (LABELS["merge"], merged)]
    per_seed_models: dict[str, list[tuple[int, str]]] = {m: [] for m in METHODS}
    per_seed_models["merge"].append((0, LABELS["merge"]))

    for seed in seeds:
        sd = out / f"seed{seed}"

        # 2. n = 8 samples per train question from the long model: shortest-RS rows and DPO pairs
        def sample_long(seed=seed, sd=sd) -> None:
            sd.mkdir(parents=True, exist_ok=True)
            prompts = random.Random(seed).sample(train_prompts, args.sample_prompts)
            tok, model = load_tokenizer(long), load_model(long)
            params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0,
                                    stop_token_ids=stop_token_ids(tok, model), seed=seed + 1)
            groups = sample_groups(HFEngine(model, tok, 128), tok, prompts, 8, params,
                                   desc=f"sampling long model (seed {seed})")
            rows, st = shortest_rs_rows(groups)
            pairs, pst = dpo_pair_rows(groups, ratio=1.5)
            log(f"  shortest-rs: {st.line()}\n  dpo-pairs: {pst.line()}")
            (sd / "sampling.json").write_text(json.dumps({"shortest_rs": vars(st), "dpo_pairs": vars(pst)}, indent=2))
            write_jsonl(sd / "pairs.jsonl", pairs)
            write_jsonl(sd / "shortest_rs.jsonl", rows)  # written last: marks the stage done

        stage(f"sampling seed {seed}", sd / "shortest_rs.jsonl", sample_long)
        story["sampling"][seed] = json.loads((sd / "sampling.json").read_text())
        srs = stage(f"shortest-RS + SFT seed {seed}", sd / "shortest_rs_sft", lambda sd=sd, seed=seed: sft(
            long, load_sft_jsonl(sd / "shortest_rs.jsonl"), sd / "shortest_rs_sft", args.sft_lr, 2, seed, log))

        def dpo(sd=sd, seed=seed) -> None:
            tok, model = load_tokenizer(long), load_model(long)
            rows = encode_pairs(tok, load_pairs_jsonl(sd / "pairs.jsonl"), 2048)
            ref = cached_reference_logps(model, rows, tok.pad_token_id, sd / "pairs.jsonl.ref_logps.pt",
                                         key=f"{model_fingerprint(long)}:{pairs_fingerprint(rows)}")
            cfg = DPOConfig(beta=args.dpo_beta, lr=args.dpo_lr, epochs=1, batch_size=8, max_length=2048, seed=seed)
            hist = dpo_train(model, tok, rows, ref, cfg)
            log(f"  dpo: {len(rows)} pairs, loss {hist[0]['dpo/loss']:.3f} -> {hist[-1]['dpo/loss']:.3f}, "
                f"margin {hist[-1]['dpo/margin']:.2f}")
            save_hf(model, tok, sd / "dpo", {"dpo": vars(cfg) | {"pairs": len(rows), "last": hist[-1]}})

        dpo_dir = stage(f"DPO seed {seed}", sd / "dpo", dpo)

        # 3. long2short RL: length penalty from the first iteration, a smaller rollout budget
        t0 = time.time()
        run_arm("l2s_rl", seed, [
            f"model.path={merged if args.rl_base == 'merge' else long}", *data[:2], *data[3:], "data.test_per_level=5", f"iterations={args.rl_iterations}",
            f"rollout.prompts_per_iteration={args.rl_prompts}", f"algorithm.minibatches={min(args.rl_minibatches, args.rl_prompts)}",
            f"algorithm.lr={args.rl_lr}", f"reward.length_weight={args.rl_length_weight}",
            "reward.length_warmup_iterations=0", f"rollout.max_new_tokens={args.rl_max_new_tokens}",
            f"eval.max_new_tokens={args.max_new_tokens}", "eval.every=0"], out, args.rerun)
        rl_dir = out / "l2s_rl" / f"seed{seed}" / "final"
        stages[f"long2short RL seed {seed}"] = {"path": str(rl_dir), "seconds": round(time.time() - t0, 1)}
        for method, label, path in (("shortest_rs", LABELS["shortest_rs"], srs), ("dpo", LABELS["dpo"], dpo_dir),
                                    ("l2s_rl", LABELS["l2s_rl"], rl_dir)):
            models.append((f"{label} (seed {seed})", path))
            per_seed_models[method].append((seed, f"{label} (seed {seed})"))

    # 4. the report: every model on the same test prompts, the same sampling
    t0 = time.time()
    results = evaluate_models([(label, str(path)) for label, path in models], test, eval_cfg)
    stages["report"] = {"seconds": round(time.time() - t0, 1)}
    settings = {"prompts": len(test), "samples_per_prompt": 1, "temperature": eval_cfg.eval.temperature,
                "max_new_tokens": args.max_new_tokens, "data": f"subset_sum test split, levels {args.levels}"}
    write_report(results, out, settings)
    by_label = {r.label: r for r in results}
    ref = by_label["long"]
    methods = {}
    for method in METHODS:
        rows = []
        for seed, label in per_seed_models[method]:
            r = by_label[label]
            rows.append({"seed": seed, "accuracy": r.accuracy, "mean_tokens": r.mean_tokens,
                         "token_reduction": 1 - r.mean_tokens / ref.mean_tokens,
                         "accuracy_delta_points": 100 * (r.accuracy - ref.accuracy),
                         "correct_per_1k_tokens": 1000 * r.accuracy / max(r.mean_tokens, 1e-9)})
        methods[method] = summarize_method(rows)
    rl = methods["l2s_rl"]
    most_efficient = max(METHODS, key=lambda m: methods[m]["correct_per_1k_tokens"])
    goal = {"token_reduction_at_least": 0.30, "accuracy_drop_at_most_points": 3.0,
            "met_reduction_and_accuracy": rl["token_reduction"] >= 0.30 and rl["accuracy_delta_points"] >= -3.0,
            "most_token_efficient": most_efficient, "l2s_rl_most_efficient": most_efficient == "l2s_rl"}
    story["wall_time_s"] = time.time() - t_start
    (out / "story.json").write_text(json.dumps(story, indent=2, default=str))
    write_result("long2short", {
        "settings": settings, "long": str(args.long), "seeds": seeds, **methods,
        "reference": {"accuracy": ref.accuracy, "mean_tokens": ref.mean_tokens},
        "goal": goal, "rl": {"base": args.rl_base, "iterations": args.rl_iterations, "prompts_per_iteration": args.rl_prompts,
                             "lr": args.rl_lr, "minibatches": args.rl_minibatches, "length_weight": args.rl_length_weight,
                             "max_new_tokens": args.rl_max_new_tokens},
        "sample_prompts": args.sample_prompts, "models": [asdict(r) for r in results],
        **json.loads(json.dumps(story, default=str))}, wall_s=story["wall_time_s"])
    log((out / "report.md").read_text())
    for m in METHODS:
        x = methods[m]
        lo, hi = x["token_reduction_ci95"]
        alo, ahi = x["accuracy_delta_ci95"]
        log(f"{LABELS[m]:24s} tokens cut {100 * x['token_reduction']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}], accuracy "
            f"{x['accuracy_delta_points']:+.1f} points [{alo:+.1f}, {ahi:+.1f}], "
            f"{x['correct_per_1k_tokens']:.2f} correct per 1k tokens")
    log(f"goal (long2short RL >= 30% fewer tokens within 3 points, and the most token-efficient): {goal}")
    log(f"{story['wall_time_s'] / 60:.1f} min; plot {out / 'token_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
