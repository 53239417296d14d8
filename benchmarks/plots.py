"""Draw the long-CoT plots in docs/ from benchmarks/results/*.json.

Each long-CoT benchmark draws its plot into its own OUT folder while it runs; this script draws
the same figures again from the results files, so the PNGs in docs/ always show the numbers the
docs' tables were rendered from (run by `make docs`). A results file that is absent is skipped
with a line saying so.

    python benchmarks/plots.py            # all of them
    python benchmarks/plots.py loss_ablation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from long_cot import plot_arms  # noqa: E402
from partial_rollouts import plot as plot_partial  # noqa: E402

from k15rl.long2short.report import ModelResult, plot_token_efficiency  # noqa: E402

RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"


def draw_loss_ablation(r: dict, dest: Path) -> None:
    plot_arms(r["runs"], dest, f"loss and optimizer-reset ablation, {len(r['seeds'])} seeds")


def draw_sampling_ablation(r: dict, dest: Path) -> None:
    plot_arms(r["runs"], dest, f"sampling ablation, {len(r['seeds'])} seeds")


def draw_partial_rollouts(r: dict, dest: Path) -> None:
    plot_partial({m["mode"]: m for m in r["modes"]}, dest)


def draw_long2short(r: dict, dest: Path) -> None:
    models = [ModelResult(**m) for m in r["models"]]
    plot_token_efficiency(models, dest, f"long2short from builtin-long, {len(r['seeds'])} seeds (95% intervals)")


# results name -> (drawing function, file in docs/)
PLOTS = {
    "loss_ablation": (draw_loss_ablation, "loss_ablation.png"),
    "sampling_ablation": (draw_sampling_ablation, "sampling_ablation.png"),
    "partial_rollouts": (draw_partial_rollouts, "partial_rollouts.png"),
    "long2short": (draw_long2short, "long2short_token_efficiency.png"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"results to draw (default all: {', '.join(PLOTS)})")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in PLOTS]
    if unknown:
        print(f"error: no plot for {', '.join(unknown)} (known: {', '.join(PLOTS)})", file=sys.stderr)
        return 2
    for name in args.names or PLOTS:
        draw, file = PLOTS[name]
        src = RESULTS / f"{name}.json"
        if not src.exists():
            print(f"{name}: {src} not written yet, skipped")
            continue
        draw(json.loads(src.read_text()), DOCS / file)
        print(f"{name}: docs/{file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
