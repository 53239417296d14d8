"""Partial rollouts (report §2.6.2) vs whole rollouts on the long-CoT workload, side by side.

The `builtin-long` model on `subset_sum` levels 2-5 (depth-first search traces: median
about 350 tokens at T = 1, a tail to the 1,900-token limit), K = 8 samples of 8 prompts per
iteration, one engine with 64 slots (K x prompts: a whole iteration's trajectories), weights
fixed (only the scheduling differs):

    whole            every trajectory runs to its end within its iteration (segment_tokens = 0):
                     the iteration waits for its longest sample while slots empty out
    partial          at most --segment new tokens per trajectory per iteration; cut ones are
                     continued first next iteration and new prompts fill the other rows; a
                     continuation re-encodes its prompt and earlier segments (a prefill)
    partial+kept KV  the same, with rollout.keep_kv: a cut trajectory's KV cache stays in the
                     engine, and its continuation starts from it without a prefill
    ... , budget     rollout.iteration_tokens = 64 slots x --segment tokens instead of a cap per
                     trajectory: the buffer is topped up to twice an iteration's trajectories
                     (cut and not yet started), all go to the engine, a freed slot takes the next
                     at once, and when the iteration has sampled its budget the ones in flight
                     are cut (their KV kept) and the rest wait for the next iteration
    ... , groups     the same engine with rollout.attention_groups = --attention-groups: a
                     decoding step's attention is split into groups of slots, each over its
                     own window of columns, so short contexts do not read the width of long
                     ones (k15rl/rollout/slots.py)

Every mode rolls out the same --trajectories / K prompts, K samples each, and ends when all
of them have finished (the partial modes drain their replay buffer at the end): the same
work in every mode, up to the sampled tokens. A training run keeps taking new prompts and
never drains, so each mode also reports its milliseconds per generated token over the
iterations that still had prompts to start (`ms_per_token_before_drain`; whole rollouts
never drain, so theirs is all of them) and that speed-up against the fastest whole mode.
Per mode: seconds per finished trajectory (the speed-up is that of the fastest
whole mode over the mode's; `vs_whole_same_groups` against the whole mode with the same
attention groups), seconds per iteration, seconds in prefills, tokens generated, and accuracy per
finished sample (the task's verifier, 95% interval). Every decoding step is timed too: a
least-squares fit over all of them (seconds = fixed + per live slot + per window column
read + per attention group beyond the first) splits each mode's decoding into fixed per-step cost, per-slot cost and attention
reads, used or masked out: what dominates, and so what partial rollouts can save.

    python benchmarks/partial_rollouts.py                          # about 25 minutes
    python benchmarks/partial_rollouts.py --trajectories 64       # a smoke run

Writes benchmarks/results/partial_rollouts.json; docs/long_cot.md renders it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import write_result  # noqa: E402
from stats import proportion_interval  # noqa: E402

from k15rl.models.loading import load_model, load_tokenizer  # noqa: E402
from k15rl.rewards import score  # noqa: E402
from k15rl.rollout.collect import partial_rollout  # noqa: E402
from k15rl.rollout import slots  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.rollout.replay import ReplayBuffer  # noqa: E402
from k15rl.tasks import get_task, make_prompts  # noqa: E402
from k15rl.trainer.resolve import resolve_model_path  # noqa: E402


class TimedEngine(HFEngine):
    """HFEngine that adds up the seconds and tokens of its prefills (`prefilled_*`; not
    `prefill_tokens`, which is the engine's chunk budget) and records every decoding step
    (forward hooks on the model): its seconds, live slots, the window columns its attention
    reads (every slot of a group reads the group's window) and the columns the live slots
    really use (`steps`: rows of [seconds, live slots, columns read, columns used, groups])."""

    prefilled_s = 0.0
    prefilled_tokens = 0

    def __init__(self, model, *args, **kw):
        super().__init__(model, *args, **kw)
        self.steps: list[tuple[float, int, int, int, int]] = []
        self._t = 0.0
        self._step: tuple[int, int, int, int] | None = None
        self._hooks = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                       model.register_forward_hook(self._after)]

    def close(self) -> None:
        """Remove the hooks from the model (the next mode's engine hooks it again)."""
        for h in self._hooks:
            h.remove()

    def _before(self, module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        self._step = None
        if ids is not None and ids.shape[1] == 1 and mask is not None:  # a decoding step: mask [S, W]
            used = mask.sum(1)  # [S] a free slot uses its new column only
            width = mask.shape[1]
            split = slots._GROUPS.get() or [(0, mask.shape[0], 0)]
            read = sum((b - a) * (width - o) for a, b, o in split)
            self._step = (int((used > 1).sum()), read, int(used[used > 1].sum()), len(split))
        self._t = time.perf_counter()

    def _after(self, module, args, output):
        if self._step is not None:
            self.steps.append((time.perf_counter() - self._t, *self._step))

    def _prefill(self, contexts, *args, **kw):
        t0 = time.perf_counter()
        try:
            return super()._prefill(contexts, *args, **kw)
        finally:
            self.prefilled_s += time.perf_counter() - t0
            self.prefilled_tokens += sum(len(c) for c in contexts)


def step_cost_model(steps: list[tuple[float, int, int, int, int]]) -> dict:
    """Least squares over decoding steps: seconds = fixed + per_slot x live slots +
    per_column x columns read + per_group x (attention groups - 1) (all modes' steps together)."""
    x = torch.tensor([[1.0, n, read, g - 1] for _, n, read, _, g in steps], dtype=torch.float64)  # [N, 4]
    y = torch.tensor([t for t, *_ in steps], dtype=torch.float64)  # [N]
    coef = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)  # [4]
    resid = y - x @ coef
    return {"fixed_s": float(coef[0]), "per_slot_s": float(coef[1]), "per_column_s": float(coef[2]),
            "per_group_s": float(coef[3]), "r2": float(1 - resid.pow(2).sum() / (y - y.mean()).pow(2).sum()),
            "steps": len(steps)}


def decode_breakdown(steps: list[tuple[float, int, int, int, int]], fit: dict, full: int) -> dict:
    """One mode's decoding steps: their seconds, and how the fitted model splits them into
    fixed per-step cost, per-slot cost and attention reads (useful and masked-out).
    `full_batch_bound`: the modelled seconds over those of the same slot-steps and used
    columns decoded `full` slots per step with nothing masked, the most any scheduling of
    this work (partial rollouts included) can save by keeping the batch full."""
    n = len(steps)
    slots_ = sum(s[1] for s in steps)
    read = sum(s[2] for s in steps)
    used = sum(s[3] for s in steps)
    parts = {"fixed": fit["fixed_s"] * n, "per_slot": fit["per_slot_s"] * slots_,
             "attention_used": fit["per_column_s"] * used, "attention_masked": fit["per_column_s"] * (read - used),
             "groups": fit["per_group_s"] * sum(s[4] - 1 for s in steps)}
    model_s = sum(parts.values())
    ideal_s = fit["fixed_s"] * -(-slots_ // full) + parts["per_slot"] + parts["attention_used"]
    return {"steps": n, "seconds": sum(s[0] for s in steps), "mean_live_slots": slots_ / max(n, 1),
            "columns_read_per_used": read / max(used, 1), "modelled_s": model_s,
            "full_batch_bound": model_s / ideal_s if ideal_s > 0 else None,
            "share": {k: v / model_s for k, v in parts.items()} if model_s > 0 else None}


def run_mode(engine: TimedEngine, tok, prompts, k: int, per_iter: int, segment: int, keep_kv: bool,
             max_tokens: int, target: int, stop_ids: list[int], token_budget: int = 0) -> dict:
    """The same `target` / k prompts in every mode: iterations (continue_first: cut
    trajectories take their rows, new prompts fill the rest up to `per_iter` x k) until
    every one of them has been started and the replay buffer is empty."""
    engine.prefilled_s, engine.prefilled_tokens, engine.steps = 0.0, 0, []
    buffer, group, pos, it, tokens = ReplayBuffer(), 0, 0, 0, 0
    finished, per_iteration, timeline, fed = [], [], [(0.0, 0)], []
    prompts = prompts[:target // k]
    t0 = time.perf_counter()
    while pos < len(prompts) or len(buffer):
        fed.append((pos < len(prompts), 0))  # (prompts left to start: not yet the drain, tokens generated)
        n_new = max(0, (per_iter * k - buffer.num_unfinished()) // k)
        batch, pos = prompts[pos:pos + n_new], pos + n_new
        t1 = time.perf_counter()
        res = partial_rollout(engine, tok, buffer, batch, k, SamplingParams(max_tokens, seed=it, stop_token_ids=stop_ids),
                              version=it, segment_tokens=segment, max_tokens=max_tokens, first_group=group,
                              keep_kv=keep_kv, token_budget=token_budget)
        per_iteration.append(time.perf_counter() - t1)
        group, it, tokens = res.next_group, it + 1, tokens + res.tokens_generated
        fed[-1] = (fed[-1][0], res.tokens_generated)
        score(res.trajectories)
        finished += res.trajectories
        timeline.append((time.perf_counter() - t0, len(finished)))
        print(f"  iteration {it}: {len(res.trajectories)} finished ({len(finished)} in all), "
              f"{buffer.num_unfinished()} cut, {per_iteration[-1]:.1f} s", flush=True)
    seconds = time.perf_counter() - t0
    correct = sum(t.correct for t in finished)
    lo, hi = proportion_interval(correct, len(finished))
    before = [(s, n) for s, (f, n) in zip(per_iteration, fed) if f]
    return {"ms_per_token_before_drain": 1e3 * sum(s for s, _ in before) / max(sum(n for _, n in before), 1),
            "drain_iterations": sum(not f for f, _ in fed), "iterations": it, "seconds": seconds, "finished": len(finished),
            "s_per_iteration": seconds / it, "s_per_finished_trajectory": seconds / len(finished),
            "prefill_s": engine.prefilled_s, "prefill_tokens": engine.prefilled_tokens, "tokens_generated": tokens,
            "mean_tokens": sum(t.num_tokens for t in finished) / len(finished),
            "accuracy_per_sample": correct / len(finished), "accuracy_ci95": [lo, hi],
            "iteration_seconds": per_iteration, "timeline": timeline, "decode_steps": engine.steps}


def plot(rows: dict, dest: Path) -> None:
    """Finished trajectories against wall seconds, one line per mode (a step per iteration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows.values():
        t, n = zip(*r["timeline"])
        ax.step(t, n, where="post", marker=".", label=f"{r['mode']}: {r['s_per_finished_trajectory']:.2f} s/trajectory")
    ax.set_xlabel("wall seconds")
    ax.set_ylabel("finished trajectories")
    ax.set_title("partial vs whole rollouts, builtin-long on subset_sum (fixed weights)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin-long")
    ap.add_argument("--levels", default="2,3,4,5")
    ap.add_argument("--segment", type=int, default=256, help="rollout.segment_tokens of the partial modes")
    ap.add_argument("--trajectories", type=int, default=256, help="trajectories per mode (--trajectories / 8 prompts)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration (K = 8 samples each)")
    ap.add_argument("--max-new-tokens", type=int, default=1900)
    ap.add_argument("--attention-groups", type=int, default=4, help="rollout.attention_groups of the ', groups' modes")
    ap.add_argument("--modes", default="whole,partial,partial+kept KV,whole, groups,partial+kept KV, groups,"
                                       "partial+kept KV, budget, groups",
                    help="comma-separated; a mode name may itself hold ', groups'")
    ap.add_argument("--plot", default="runs/partial_rollouts/partial_rollouts.png")
    args = ap.parse_args()
    t0 = time.time()
    path = resolve_model_path(args.model, "--model")
    model, tok = load_model(path), load_tokenizer(path)
    k = 8
    levels = tuple(int(x) for x in args.levels.split(","))
    n = args.trajectories // k // len(levels) + 1
    prompts = make_prompts(get_task("subset_sum"), "train", n, levels, seed=0)
    prompts = [prompts[i] for i in torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0)).tolist()]
    slots = k * args.prompts
    # name -> (segment tokens, keep_kv, iteration token budget, trajectories the buffer is topped up to / k)
    all_modes = {"whole": (0, False, 0, args.prompts), "partial": (args.segment, False, 0, args.prompts),
                 "partial+kept KV": (args.segment, True, 0, args.prompts),
                 "partial+kept KV|budget": (0, True, slots * args.segment, 2 * args.prompts)}
    names = [m.strip() for m in args.modes.replace(", groups", "|groups").replace(", budget", "|budget").split(",")]
    rows = {}
    for name in names:
        grouped = name.endswith("|groups")
        base_name = name.removesuffix("|groups")
        segment, keep, budget, per_iter = all_modes[base_name]
        groups = args.attention_groups if grouped else 1
        name = base_name.replace("|", ", ") + (", groups" if grouped else "")
        print(f"{name}: segment {segment or 'none'}, iteration budget {budget or 'none'}, attention groups {groups}, "
              f"{args.trajectories} trajectories", flush=True)
        engine = TimedEngine(model, tok, max_batch=slots, attention_groups=groups)
        rows[name] = {"mode": name, "segment_tokens": segment, "keep_kv": keep, "iteration_tokens": budget,
                      "attention_groups": groups,
                      **run_mode(engine, tok, prompts, k, per_iter, segment, keep, args.max_new_tokens,
                                 args.trajectories, [tok.eos_token_id], token_budget=budget)}
        engine.close()
    fit = step_cost_model([s for r in rows.values() for s in r["decode_steps"]])
    for r in rows.values():
        r["decode"] = decode_breakdown(r.pop("decode_steps"), fit, k * args.prompts)
    whole = {r["attention_groups"]: r["s_per_finished_trajectory"] for r in rows.values()
             if not r["segment_tokens"] and not r["iteration_tokens"]}
    whole_token = min((r["ms_per_token_before_drain"] for r in rows.values()
                       if not r["segment_tokens"] and not r["iteration_tokens"]), default=None)
    for r in rows.values():  # per token generated while prompts remain (a training run's regime)
        r["speedup_per_token_before_drain"] = whole_token / r["ms_per_token_before_drain"] if whole_token else None
    fastest = min(whole.values()) if whole else None
    for r in rows.values():
        same = whole.get(r["attention_groups"])
        r["speedup_per_finished_trajectory"] = fastest / r["s_per_finished_trajectory"] if fastest else None
        r["vs_whole_same_groups"] = same / r["s_per_finished_trajectory"] if same else None
        print(f"{r['mode']:16s} {r['iterations']:10d} {r['s_per_iteration']:11.1f} "
              f"{r['s_per_finished_trajectory']:12.3f} {r['speedup_per_finished_trajectory'] or 0:7.2f}x "
              f"{r['prefill_s']:9.1f} {100 * r['accuracy_per_sample']:14.1f}% {r['mean_tokens']:11.0f}")
    print(f"decoding step = {1e3 * fit['fixed_s']:.2f} ms + {1e3 * fit['per_slot_s']:.3f} ms per live slot + "
          f"{1e6 * fit['per_column_s']:.2f} us per column read + {1e3 * fit['per_group_s']:.2f} ms per extra group "
          f"(R^2 {fit['r2']:.2f}, {fit['steps']:,} steps)")
    for r in rows.values():
        d = r["decode"]
        print(f"  {r['mode']:24s} {d['steps']:6d} steps, {d['mean_live_slots']:5.1f} live slots, "
              f"{d['columns_read_per_used']:.2f} columns read per used, full-batch bound {d['full_batch_bound']:.2f}x; "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in (d["share"] or {}).items()))
    partial = [r for r in rows.values() if r["segment_tokens"] or r["iteration_tokens"]]
    best = max(partial, key=lambda r: r["speedup_per_finished_trajectory"] or 0) if partial and whole else None
    plot(rows, Path(args.plot))
    write_result("partial_rollouts", {
        "model": args.model, "levels": list(levels), "k": k, "prompts_per_iteration": args.prompts,
        "max_new_tokens": args.max_new_tokens, "segment_tokens": args.segment, "trajectories": args.trajectories,
        "attention_groups": args.attention_groups, "slots": slots, "same_prompts": True,
        "threads": torch.get_num_threads(), "weights": "fixed (scheduling only)",
        "speedup_per_finished_trajectory": best["speedup_per_finished_trajectory"] if best else None,
        "best_mode": best["mode"] if best else None,
        "goal": "speedup_per_finished_trajectory >= 2 with no loss of accuracy per sample",
        "step_cost_model": fit, "modes": list(rows.values())}, wall_s=time.time() - t0)


if __name__ == "__main__":
    main()
