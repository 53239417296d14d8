"""Peak memory of one policy update with long responses: as it is, with activation
checkpointing (`algorithm.activation_checkpointing`), with micro-batches by token count
(`algorithm.micro_batch_tokens`, one row's tokens per pass) and with both.

Each mode runs in its own child process (so one mode's allocations never lower another's
peak): load the model, build the trajectories (random response tokens: memory does not
depend on what they say), then one `PolicyTrainer.update` through the config path
(`load_config` -> `update_plan`). A child reports its peak resident set size (RSS)
before and after the update; the difference is the update's own peak (activations,
logits, gradients, AdamW state). The loss and gradient norm of every mode are printed
too: the modes compute the same update. Writes benchmarks/results/update_memory.json
(docs/sharded_training.md renders it).

    python benchmarks/update_memory.py --model models/smollm2 --response-tokens 2048 --rows 2
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time

from results import model_name, run_child, write_result

MODES = {  # name -> config overrides
    "baseline": [],
    "activation checkpointing": ["algorithm.activation_checkpointing=true"],
    "token micro-batches": ["algorithm.micro_batch_tokens={row_tokens}"],
    "both": ["algorithm.activation_checkpointing=true", "algorithm.micro_batch_tokens={row_tokens}"],
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One mode: one update; prints one JSON line."""
    import torch

    from k15rl.config import load_config
    from k15rl.models.loading import load_model, load_tokenizer
    from k15rl.trainer.update import PolicyTrainer, update_plan
    from k15rl.types import Prompt, Trajectory

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    row_tokens = args.prompt_tokens + args.response_tokens
    overrides = [o.format(row_tokens=row_tokens) for o in MODES[args.child]]
    cfg = load_config(None, [f"algorithm.micro_batch={args.rows}", f"rollout.prompts_per_iteration={args.rows // 2}",
                             "rollout.k=2", *overrides])
    rng = random.Random(0)
    vocab = model.config.vocab_size
    trajs = []
    for i in range(args.rows):  # groups of 2, one rewarded sample each
        prompt = [rng.randrange(3, vocab) for _ in range(args.prompt_tokens)]
        resp = [rng.randrange(3, vocab) for _ in range(args.response_tokens)]
        trajs.append(Trajectory(Prompt(f"p{i // 2}", (("user", "?"),), "", "bench"), i // 2, prompt, resp,
                                [-11.0] * len(resp), "max_len", reward=float(i % 2 == 0)))
    trainer = PolicyTrainer(model, update_plan(cfg, tok.pad_token_id))
    before = peak_rss_mb()
    t0 = time.time()
    metrics = trainer.update(trajs, version=0, seed=0)
    out = {"mode": args.child, "overrides": overrides, "rss_before_update_mb": round(before, 1),
           "peak_rss_mb": round(peak_rss_mb(), 1), "update_s": round(time.time() - t0, 1),
           "loss": metrics["loss/policy"], "grad_norm": metrics["train/grad_norm"]}
    out["update_peak_mb"] = round(out["peak_rss_mb"] - out["rss_before_update_mb"], 1)
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2", help="a Hugging Face model folder")
    ap.add_argument("--response-tokens", type=int, default=2048)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rows", type=int, default=2, help="trajectories (groups of 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    t0 = time.time()
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--rows", str(args.rows),
               "--response-tokens", str(args.response_tokens), "--prompt-tokens", str(args.prompt_tokens),
               "--threads", str(args.threads)]
        rows.append(run_child(cmd, mode))
        r = rows[-1]
        print(f"{mode:26s} peak RSS {r['peak_rss_mb']:8.0f} MB (update {r['update_peak_mb']:7.0f} MB) "
              f"{r['update_s']:6.1f} s  loss {r['loss']:.6f}  grad norm {r['grad_norm']:.6f}", flush=True)
    base = rows[0]["update_peak_mb"]
    for r in rows:
        r["update_peak_ratio"] = round(r["update_peak_mb"] / base, 3) if base else None
    model = model_name(args.model)
    write_result("update_memory", {"model": model, "model_folder": args.model, "rows": args.rows,
                                   "prompt_tokens": args.prompt_tokens, "response_tokens": args.response_tokens,
                                   "threads": args.threads, "modes": rows}, wall_s=time.time() - t0)


if __name__ == "__main__":
    main()
