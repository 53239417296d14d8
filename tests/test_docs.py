"""The docs' result tables are rendered from benchmarks/results/*.json and must match them.

`python benchmarks/render_docs.py --check` (what `make docs` would change) runs here; no
benchmark runs. A unit test renders a tiny fake results file into a tiny fake doc.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RENDER = ROOT / "benchmarks" / "render_docs.py"


@pytest.fixture(scope="module")
def render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", RENDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_docs"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_committed_docs_match_the_results_files():
    proc = subprocess.run([sys.executable, str(RENDER), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"docs out of date with benchmarks/results (run `make docs`):\n{proc.stderr}"


def test_every_results_file_has_a_block(render_docs):
    """A results file nobody renders is a table that drifts out of the docs."""
    rendered = {b.results for b in render_docs.BLOCKS.values()}
    files = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert files <= rendered, f"results files without a renderer: {sorted(files - rendered)}"


FAKE = {
    "name": "overlap", "command": "python benchmarks/overlap.py --iterations 2", "commit": "0123456789abcdef-dirty",
    "date": "2025-03-04T05:06:07+00:00", "wall_s": 90.0,
    "machine": {"cpu": "Test CPU", "cores": 2, "ram_gb": 8.0, "torch": "2.13.0", "load_average": [0.5, 0.4, 0.3]},
    "iterations": 2, "cores": 2,
    "modes": [{"mode": "sequential", "overlap": False, "threads": 2, "s_per_iteration": 10.0, "speed_up": 1.0},
              {"mode": "overlap", "overlap": True, "threads": 2, "s_per_iteration": 12.5, "speed_up": 0.8}],
}


def test_render_fake_results(render_docs, tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "overlap.json").write_text(json.dumps(FAKE))
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "x.md"
    doc.write_text("# X\n\nbefore\n<!-- results:overlap -->\nhand-typed 11.26\n<!-- /results -->\nafter\n"
                   "<!-- results:soak -->\n<!-- /results -->\n")
    (tmp_path / "README.md").write_text("<!-- results:overlap.readme -->\n<!-- /results -->\n")

    problems = render_docs.check(tmp_path, results)
    assert [p.split(":")[0] for p in problems] == ["README.md", "docs/x.md", "docs/x.md"]
    assert "block results:overlap differs" in problems[1] and "block results:soak differs" in problems[2]
    assert render_docs.main(["--check", "--root", str(tmp_path)]) == 1

    assert render_docs.main(["--root", str(tmp_path)]) == 0
    text = doc.read_text()
    assert text.startswith("# X\n\nbefore\n<!-- results:overlap -->\n") and text.endswith("<!-- /results -->\n")
    assert "hand-typed" not in text and "\nafter\n" in text
    assert "| sequential | 2 | 10.00 | 1.00x |" in text
    assert "| `rollout.overlap=true` | 2 | 12.50 | 0.80x |" in text
    # which run produced it: command, commit (dirty), date, wall time, machine
    assert ("_Measured by `python benchmarks/overlap.py --iterations 2` at commit `0123456789ab-dirty` on "
            "2025-03-04 05:06 UTC (2 cores, Test CPU, 8 GB, torch 2.13.0") in text
    assert "wall time 1.5 min. Source: `benchmarks/results/overlap.json`._" in text
    # a results file that does not exist yet renders as a line saying so, with the command
    assert "_Not yet run into `benchmarks/results/soak.json`: `python benchmarks/soak.py" in text
    assert "0.80x (best of its thread settings) (`benchmarks/results/overlap.json`, commit `0123456789ab-dirty`" \
        in (tmp_path / "README.md").read_text()
    assert render_docs.check(tmp_path, results) == []

    # rendering is idempotent, and an edit inside a block is caught again
    assert render_docs.main(["--root", str(tmp_path)]) == 0 and doc.read_text() == text
    doc.write_text(text.replace("12.50", "11.00"))
    problems = render_docs.check(tmp_path, results)
    assert len(problems) == 1 and problems[0].startswith("docs/x.md: block results:overlap differs")


def test_renderer_doctests(render_docs):
    import doctest

    assert doctest.testmod(render_docs).failed == 0


def test_bad_markers(render_docs, tmp_path):
    with pytest.raises(ValueError, match="unknown block results:nope"):
        render_docs.render_text("<!-- results:nope -->\n<!-- /results -->\n", tmp_path, "a.md")
    with pytest.raises(ValueError, match="without its"):
        render_docs.render_text("<!-- results:overlap -->\nno end\n", tmp_path, "a.md")


def test_plots_draw_from_the_results_files(tmp_path, monkeypatch):
    """benchmarks/plots.py draws each long-CoT PNG from its committed results file (into a
    temporary docs folder here), and names an unknown plot in a one-line error."""
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    monkeypatch.setattr(plots, "DOCS", tmp_path)
    present = [n for n in plots.PLOTS if (ROOT / "benchmarks" / "results" / f"{n}.json").exists()]
    assert present, "no long-CoT results file to draw from"
    assert plots.main(present) == 0
    for name in present:
        png = tmp_path / plots.PLOTS[name][1]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.main(["nonsense"]) == 2
