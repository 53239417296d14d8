"""Built-in visual tasks, rendered deterministically with Pillow (report §2.3.5).

The report's visual RL data comes in three kinds; the built-in tasks cover the two that
can be generated:

    vis_count   synthetic visual reasoning: count the shapes of one colour on a grid
    vis_where   synthetic visual reasoning (spatial relations): which shape is directly
                left of, right of, above or below a named one
    vis_pattern synthetic visual reasoning (geometric patterns): shapes repeat in reading
                order; which one belongs in the cell marked "?"
    vis_bars    synthetic chart analysis: which labelled bar is tallest
    vis_text    text-rendered: an `arith` question drawn into the image, the text prompt
                only says "answer the question in the image", so the same problem can be
                asked as text (task `arith`) or as a screenshot and the answers compared
    vis_sort    text-rendered: the same for a `sort` question (the text demo's task, whose
                errors are single slips that sampling makes and RL removes)

A problem's image is PNG bytes in `meta["image"]`; `make_prompts` turns it into an
`<image>` placeholder in the prompt and `meta["images"]`. The split of a visual problem is
decided by `meta["split_key"]` (the scene, or for `vis_text` the text question itself, so a
question and its screenshot always land in the same split). Real-world image data is the
user's: an `images` column in a data file (`k15rl.data.rows`); ARC grids drawn as images
are `vis_arc` (k15rl/tasks/arc.py).
"""

from __future__ import annotations

import random

from k15rl.models.vision import to_png
from k15rl.tasks.arith import ArithTask
from k15rl.tasks.base import Problem
from k15rl.tasks.sort import SortTask
from k15rl.verifiers import verify_integer
from k15rl.verifiers.answers import extract_answer

SIZE = 96  # pixels; the built-in VLM's image size
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (40, 70, 220), "yellow": (230, 200, 20)}
SHAPES = ("square", "circle", "triangle")


def _canvas():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), "white")
    return img, ImageDraw.Draw(img)


def _shape(draw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _grid_png(side: int, items, mark: int | None = None) -> bytes:
    """PNG of a side x side grid holding `items` [(cell, colour, shape)], cells numbered in
    reading order; cell `mark`, if given, holds a "?" in a grey frame."""
    img, draw = _canvas()
    step = SIZE // side
    pad = step // 6
    for cell, colour, kind in items:
        r, c = divmod(cell, side)
        _shape(draw, kind, (c * step + pad, r * step + pad, (c + 1) * step - pad, (r + 1) * step - pad),
               COLOURS[colour])
    if mark is not None:
        r, c = divmod(mark, side)
        question_mark(draw, (c * step + pad, r * step + pad, (c + 1) * step - pad, (r + 1) * step - pad))
    return to_png(img)


def question_mark(draw, box: tuple[int, int, int, int]) -> None:
    """A grey frame over `box` (x0, y0, x1, y1, inclusive) with a black "?" in its middle."""
    from PIL import ImageFont

    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(120, 120, 120))
    font = ImageFont.load_default_imagefont()  # 6x11 px bitmap: no font files needed
    draw.text(((x0 + x1) // 2 - 2, (y0 + y1) // 2 - 5), "?", fill="black", font=font)


def _scene(items) -> str:
    return ";".join(f"{cell}:{colour}:{kind}" for cell, colour, kind in items)


# Every (colour, shape) pair: the objects of a `vis_where` or `vis_pattern` scene are
# distinct pairs, so "the red circle" names one object.
OBJECTS = tuple((colour, kind) for colour in sorted(COLOURS) for kind in SHAPES)


def _same_object(response: str, answer: str) -> bool:
    """The response's final answer names the object `answer` ("blue square"): case,
    surrounding punctuation and a leading article aside."""
    got = extract_answer(response)
    if got is None:
        return False
    words = got.lower().strip().strip(".!").split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words) == answer


# level -> (grid side, most shapes, colours in play)
COUNT_LEVELS: dict[int, tuple[int, int, int]] = {1: (2, 3, 2), 2: (3, 5, 2), 3: (3, 7, 3), 4: (4, 9, 4), 5: (4, 12, 4)}


class VisCountTask:
    """How many shapes of one colour are on a grid. Answer: an integer.

    >>> t = VisCountTask()
    >>> p = t.generate(random.Random(0), 2)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "vis_count"
    levels = tuple(COUNT_LEVELS)

    def generate(self, rng: random.Random, level: int) -> Problem:
        side, most, n_colours = COUNT_LEVELS[level]
        colours = rng.sample(sorted(COLOURS), n_colours)
        cells = rng.sample(range(side * side), rng.randint(2, most))
        items = sorted((c, rng.choice(colours), rng.choice(SHAPES)) for c in cells)  # (cell, colour, shape)
        target = rng.choice(colours)
        answer = sum(colour == target for _, colour, _ in items)
        return Problem(f"How many {target} shapes are in the image?", str(answer), level,
                       meta={"image": _grid_png(side, items), "split_key": f"vis_count/{side}/{_scene(items)}",
                             "items": [list(x) for x in items], "side": side, "target": target})

    def verify(self, response: str, answer: str) -> bool:
        return verify_integer(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Scan the grid row by row naming each shape, count the target colour, check, answer."""
        side, target = problem.meta["side"], problem.meta["target"]
        out = [f"plan: scan the {side}x{side} grid row by row, count the {target} shapes."]
        count = 0
        for row in range(side):
            here = [(colour, kind) for cell, colour, kind in problem.meta["items"] if cell // side == row]
            seen = ", ".join(f"{colour} {kind}" for colour, kind in here) or "empty"
            count += sum(colour == target for colour, _ in here)
            out.append(f"row {row + 1}: {seen}. {target} so far: {count}")
        out.append(f"check: {len(problem.meta['items'])} shapes in all. ok")
        out.append(f"answer: {count}")
        return "\n".join(out)


LETTERS = "ABCDEF"
# level -> (number of bars, smallest gap between the tallest and the next, in pixels)
BAR_LEVELS: dict[int, tuple[int, int]] = {1: (2, 20), 2: (3, 12), 3: (4, 8), 4: (5, 5), 5: (6, 3)}


class VisBarsTask:
    """Which labelled bar of a bar chart is tallest. Answer: its letter.

    >>> t = VisBarsTask()
    >>> p = t.generate(random.Random(0), 3)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "vis_bars"
    levels = tuple(BAR_LEVELS)

    def generate(self, rng: random.Random, level: int) -> Problem:
        from PIL import ImageFont

        n, gap = BAR_LEVELS[level]
        top = rng.randint(40, 80)
        heights = [rng.randint(8, top - gap) for _ in range(n)]
        best = rng.randrange(n)
        heights[best] = top
        img, draw = _canvas()
        font = ImageFont.load_default_imagefont()  # 6x11 px bitmap: no font files needed
        width = SIZE // n
        for i, h in enumerate(heights):
            x0 = i * width + width // 5
            draw.rectangle((x0, SIZE - 12 - h, x0 + width * 3 // 5, SIZE - 12), fill=(60, 60, 60))
            draw.text((x0 + width * 3 // 10 - 3, SIZE - 11), LETTERS[i], fill="black", font=font)
        return Problem(f"Which bar in the chart is tallest? Answer with its letter ({', '.join(LETTERS[:n])}).",
                       LETTERS[best], level,
                       meta={"image": to_png(img), "split_key": f"vis_bars/{heights}", "heights": heights})

    def verify(self, response: str, answer: str) -> bool:
        got = extract_answer(response)
        return got is not None and got.strip().strip(".").upper() == answer

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Read every bar's height in order, keep the tallest so far, answer its letter."""
        heights = problem.meta["heights"]
        out = [f"plan: {len(heights)} bars. read each height, keep the tallest."]
        best = 0
        for i, h in enumerate(heights):
            if h > heights[best]:
                best = i
            out.append(f"bar {LETTERS[i]}: about {h // 4}. tallest so far: {LETTERS[best]}")
        out.append(f"answer: {LETTERS[best]}")
        return "\n".join(out)


# direction -> (row step, column step); "left of" the object is the cell just before it
RELATIONS: dict[str, tuple[int, int]] = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
# level -> (grid side, shapes, the relations asked)
WHERE_LEVELS: dict[int, tuple[int, int, tuple[str, ...]]] = {
    1: (2, 3, ("left of", "right of")), 2: (3, 4, ("left of", "right of")), 3: (3, 5, tuple(RELATIONS)),
    4: (4, 8, tuple(RELATIONS)), 5: (4, 12, tuple(RELATIONS))}


class VisWhereTask:
    """Spatial relations (report §2.3.5, synthetic visual reasoning): which shape is
    directly left of, right of, above or below a named one, on a grid of distinct shapes.
    Answer: its colour and shape ("green triangle").

    >>> t = VisWhereTask()
    >>> p = t.generate(random.Random(0), 4)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    >>> t.verify("answer: The " + p.answer.upper() + ".", p.answer)
    True
    """

    name = "vis_where"
    levels = tuple(WHERE_LEVELS)

    def generate(self, rng: random.Random, level: int) -> Problem:
        side, n, relations = WHERE_LEVELS[level]
        while True:  # redraw the rare scene where no object has a neighbour in an asked direction
            cells = rng.sample(range(side * side), n)
            items = sorted((cell, *obj) for cell, obj in zip(cells, rng.sample(OBJECTS, n)))
            at = {cell: (colour, kind) for cell, colour, kind in items}
            asks = [(cell, rel) for cell in sorted(at) for rel in relations
                    if (nb := self.neighbour(side, cell, rel)) is not None and nb in at]
            if asks:
                break
        cell, rel = rng.choice(asks)
        colour, kind = at[cell]
        answer = " ".join(at[self.neighbour(side, cell, rel)])
        return Problem(f"Which shape is directly {rel} the {colour} {kind}? Answer with its colour and shape.",
                       answer, level,
                       meta={"image": _grid_png(side, items),
                             "split_key": f"vis_where/{side}/{_scene(items)}",
                             "items": [list(x) for x in items], "side": side, "cell": cell, "relation": rel})

    @staticmethod
    def neighbour(side: int, cell: int, relation: str) -> int | None:
        """The cell next to `cell` in `relation`'s direction, or None past the grid's edge."""
        (r, c), (dr, dc) = divmod(cell, side), RELATIONS[relation]
        return (r + dr) * side + c + dc if 0 <= r + dr < side and 0 <= c + dc < side else None

    def verify(self, response: str, answer: str) -> bool:
        return _same_object(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """List every row cell by cell (numbered columns, empty ones too), locate the named
        shape, step one cell in the asked direction, answer what is there."""
        side, cell, rel = problem.meta["side"], problem.meta["cell"], problem.meta["relation"]
        at = {c: f"{colour} {kind}" for c, colour, kind in problem.meta["items"]}
        out = [f"plan: find the {at[cell]}, then look at the cell directly {rel} it."]
        for row in range(side):
            cells = ", ".join(f"{col + 1} {at.get(row * side + col, 'empty')}" for col in range(side))
            out.append(f"row {row + 1}: {cells}")
        r, c = divmod(cell, side)
        nb = self.neighbour(side, cell, rel)
        out.append(f"the {at[cell]}: row {r + 1}, column {c + 1}.")
        out.append(f"directly {rel} it: row {nb // side + 1}, column {nb % side + 1}: {at[nb]}.")
        out.append(f"answer: {at[nb]}")
        return "\n".join(out)


# level -> (grid side, length of the repeating part)
# (a run as long as the grid is wide repeats down the columns: the easiest of each size)
PATTERN_LEVELS: dict[int, tuple[int, int]] = {1: (3, 3), 2: (3, 2), 3: (4, 4), 4: (4, 3), 5: (4, 5)}


class VisPatternTask:
    """Geometric patterns (report §2.3.5, synthetic visual reasoning): a run of distinct
    shapes repeats in reading order across a grid; one cell shows "?". Answer: the shape
    that belongs there ("red circle"). Every part of the run appears at least twice, so the
    grid determines the answer.

    >>> t = VisPatternTask()
    >>> p = t.generate(random.Random(0), 5)
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "vis_pattern"
    levels = tuple(PATTERN_LEVELS)

    def generate(self, rng: random.Random, level: int) -> Problem:
        side, period = PATTERN_LEVELS[level]
        unit = rng.sample(OBJECTS, period)
        missing = rng.randrange(side * side)
        items = [(cell, *unit[cell % period]) for cell in range(side * side) if cell != missing]
        return Problem("A run of shapes, no two alike, repeats in reading order (row by row, left to right). "
                       "Which shape belongs in the cell marked ? Answer with its colour and shape.",
                       " ".join(unit[missing % period]), level,
                       meta={"image": _grid_png(side, items, mark=missing),
                             "split_key": f"vis_pattern/{side}/{_scene(items)}/{missing}",
                             # one run is in one split, wherever its "?" is
                             "split_group": "vis_pattern/" + ",".join(" ".join(x) for x in unit),
                             "unit": [list(x) for x in unit], "side": side, "missing": missing})

    def verify(self, response: str, answer: str) -> bool:
        return _same_object(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Read the cells row by row, name the repeating run, then fill the "?" from its
        neighbour: the part of the run after the shape before it (or, in the first cell,
        before the shape after it). No position arithmetic."""
        side, missing = problem.meta["side"], problem.meta["missing"]
        unit = [f"{colour} {kind}" for colour, kind in problem.meta["unit"]]
        seq = ["?" if i == missing else unit[i % len(unit)] for i in range(side * side)]
        out = ["plan: read the cells row by row, find the part that repeats, fill the ?."]
        out += [f"row {row + 1}: {', '.join(seq[row * side:(row + 1) * side])}" for row in range(side)]
        out.append(f"repeats: {', '.join(unit)}.")
        k = missing % len(unit)
        if missing > 0:
            out.append(f"before ?: {seq[missing - 1]}. next in the repeat: {unit[k]}.")
        else:
            out.append(f"after ?: {seq[1]}. before it in the repeat: {unit[k]}.")
        out.append(f"answer: {unit[k]}")
        return "\n".join(out)


class VisTextTask:
    """An `arith` question rendered into the image (text-rendered data, report §2.3.5); the
    text prompt holds no question. Answer and verifier are `arith`'s.

    One character per CELL x CELL square, CELL the built-in tower's patch (12 px): each
    image token then sees one whole character. Free-flowing 6 px text (two or three
    characters, cut anywhere, per patch) was beyond what the built-in 2-layer tower learned
    to read in its warm-up: 3% of these questions answered before and after RL
    (docs/vision.md).

    >>> t = VisTextTask()
    >>> p = t.generate(random.Random(0), 1)
    >>> p.meta["split_key"] == p.meta["text_question"]  # the same split as the text version
    True
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    >>> VisTextTask.lines("Compute 19+15-15-11-17-16-14-11.")
    ['Compute', '19+15-15', '-11-17-1', '6-14-11.']
    """

    name = "vis_text"
    levels = (1, 2, 3, 4, 5)
    CELL = 12  # px, the built-in VLM's patch size
    CHARS_PER_LINE = LINES = SIZE // CELL  # a square image: as many lines as characters per line

    def __init__(self):
        self.text = ArithTask(mistake_prob=0.0)  # the text task whose questions are drawn

    @classmethod
    def lines(cls, question: str) -> list[str]:
        """`question` wrapped at CHARS_PER_LINE characters, long expressions broken anywhere."""
        lines = [""]
        for w in question.split():
            while len(w) > cls.CHARS_PER_LINE:
                lines.append(w[: cls.CHARS_PER_LINE])
                w = w[cls.CHARS_PER_LINE :]
            if len(lines[-1]) + len(w) + 1 > cls.CHARS_PER_LINE:
                lines.append(w)
            else:
                lines[-1] = f"{lines[-1]} {w}".strip()
        lines = [x for x in lines if x]
        if len(lines) > cls.LINES:
            raise ValueError(f"{question!r} needs {len(lines)} lines; the image holds {cls.LINES}")
        return lines

    @classmethod
    def drawn(cls, question: str) -> str:
        """The text drawn into the image: the question as it is (each `arith` character is one
        token of the built-in tokenizer, so the reading advances one cell per token)."""
        return question

    def generate(self, rng: random.Random, level: int) -> Problem:
        from PIL import ImageFont

        p = self.text.generate(rng, level)
        img, draw = _canvas()
        font = ImageFont.load_default_imagefont()  # 6x11 px bitmap: no font files needed
        for i, line in enumerate(self.lines(self.drawn(p.question))):
            for j, ch in enumerate(line):  # centred in its cell
                draw.text((j * self.CELL + 3, i * self.CELL), ch, fill="black", font=font)
        return Problem("Answer the question shown in the image.", p.answer, level,
                       meta={**p.meta, "image": to_png(img), "split_key": p.question, "text_question": p.question})

    def verify(self, response: str, answer: str) -> bool:
        return self.text.verify(response, answer)

    def warmup_trace(self, problem: Problem, rng: random.Random) -> str:
        """Read the question off the image, then `arith`'s worked steps."""
        text = Problem(problem.meta["text_question"], problem.answer, problem.level, problem.meta)
        return f"the image reads: {problem.meta['text_question']}\n" + self.text.warmup_trace(text, rng)


class VisSortTask(VisTextTask):
    """A `sort` question rendered into the image, drawn as `vis_text` draws `arith`'s but
    with the letters side by side, one per cell (`drawn`); the trace reads the letters off
    the image, then sorts them as `sort`'s warm-up does (with its occasional
    noticed-and-redone slip). Levels 1-5 of `sort` (4 to 16 letters; the 20 of level 6 do
    not fit the image).

    >>> t = VisSortTask()
    >>> p = t.generate(random.Random(0), 5)
    >>> VisSortTask.lines(VisSortTask.drawn(p.meta["text_question"]))[3:]
    ['mynbiqpz', 'jtlrdvce', '.']
    >>> t.verify(t.warmup_trace(p, random.Random(0)), p.answer)
    True
    """

    name = "vis_sort"
    levels = (1, 2, 3, 4, 5)

    @classmethod
    def drawn(cls, question: str) -> str:
        """The question with no spaces between its letters: the built-in tokenizer reads
        " e" as one token, so with the spaces drawn each token of the reading would advance
        two cells, and the relative offset from a token to its cell would change letter by
        letter. The warm-up VLM's image features tell every letter apart (a linear probe on
        them is right on all held-out cells), yet with the spaces drawn it never learned to
        read them (docs/vision.md); `vis_text`'s digits, one token per cell, it reads."""
        head, letters = question.split(": ", 1)
        return f"{head}: {letters.replace(' ', '')}"

    def __init__(self):
        self.text = SortTask()


VISUAL_TASKS = {"vis_bars": VisBarsTask, "vis_count": VisCountTask, "vis_pattern": VisPatternTask,
                "vis_sort": VisSortTask, "vis_text": VisTextTask, "vis_where": VisWhereTask}
