"""Agreement of the chain-of-thought judge (report §2.3.5) with math-verify.

A labelled set is built from arithmetic problems of the `arith` task: for each, a
response whose final answer is the reference, an equivalent form of it (a fraction, a
decimal, a sum), or a wrong value; math-verify labels every response. The judge model
grades the same responses; the script prints agreement, agreement on each label, and how
often the judge's output held no valid JSON verdict (counted as disagreement), and writes
them to benchmarks/results/judge_agreement.json (docs/code_rewards.md renders it).

    python benchmarks/judge_agreement.py --model builtin --model /path/to/hf_folder --n 60
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from results import write_result
from tqdm import tqdm


def labelled_set(n: int, seed: int = 0) -> list[dict]:
    from k15rl.verifiers import verify_math
    from k15rl.tasks import get_task

    task = get_task("arith")
    rng = random.Random(seed)
    forms = [
        ("same", lambda a: str(a)),
        ("fraction", lambda a: f"\\frac{{{2 * a}}}{{2}}"),
        ("decimal", lambda a: f"{a}.0"),
        ("sum", lambda a: f"{a - 1} + 1"),
        ("off_by_one", lambda a: str(a + 1)),
        ("double", lambda a: str(2 * a + 2)),
        ("negated", lambda a: str(-a - 1)),
    ]
    items = []
    for i in range(n):
        p = task.generate(rng, rng.choice(task.levels[:3]))
        kind, form = forms[i % len(forms)]
        a = int(p.answer)
        response = f"Adding step by step, the result is {form(a)}.\nanswer: {form(a)}"
        items.append({"question": p.question, "reference": p.answer, "response": response, "kind": kind,
                      "label": verify_math(response, p.answer)})
    return items


def measure(model: str, items: list[dict], max_new_tokens: int, batch: int) -> dict:
    from k15rl.rewards.judge import load_judge
    from k15rl.trainer.resolve import resolve_model_path

    judge = load_judge(resolve_model_path(model, "--model"), max_new_tokens=max_new_tokens, max_batch=batch)
    t0 = time.time()
    verdicts = []
    for i in tqdm(range(0, len(items), batch), desc=f"judge {model}", unit="batch"):
        chunk = items[i: i + batch]
        verdicts += judge.judge([(it["question"], it["reference"], it["response"]) for it in chunk])
    wall = time.time() - t0
    agree = [v.correct is not None and v.correct == it["label"] for v, it in zip(verdicts, items)]
    pos = [a for a, it in zip(agree, items) if it["label"]]
    neg = [a for a, it in zip(agree, items) if not it["label"]]
    return {
        "model": model, "n": len(items), "agreement": sum(agree) / len(items),
        "agreement_on_correct": sum(pos) / max(len(pos), 1), "agreement_on_wrong": sum(neg) / max(len(neg), 1),
        "no_verdict": sum(v.correct is None for v in verdicts) / len(items),
        "always_true_baseline": sum(it["label"] for it in items) / len(items),
        "seconds": wall, "example_output": verdicts[0].text[-400:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="model folder or 'builtin' (repeatable)")
    ap.add_argument("--label", action="append", help="the docs' name of each --model, in order (repeatable)")
    ap.add_argument("--n", type=int, default=56)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    items = labelled_set(args.n)
    print(f"labelled set: {len(items)} responses, {sum(i['label'] for i in items)} correct per math-verify")
    results, labels = [], args.label or []
    for i, m in enumerate(args.model):
        r = measure(m, items, args.max_new_tokens, args.batch) | {"label": labels[i] if i < len(labels) else m}
        results.append(r)
        print(f"{m}: agreement {100 * r['agreement']:.1f}% (on correct {100 * r['agreement_on_correct']:.1f}%, "
              f"on wrong {100 * r['agreement_on_wrong']:.1f}%), no valid verdict {100 * r['no_verdict']:.1f}%, "
              f"{r['seconds']:.0f} s; answering 'correct' always would agree {100 * r['always_true_baseline']:.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    write_result("judge_agreement", {"n": len(items), "correct": sum(i["label"] for i in items),
                                     "max_new_tokens": args.max_new_tokens, "batch": args.batch, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
