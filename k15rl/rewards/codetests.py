"""Test-case generation and validation for code problems (report §2.3.5, RECIPE §7).

For every problem: a generator script (normally built on `cyaron`) writes candidate
test inputs, one per seed; every reference solution runs on every input in the sandbox;
a case is kept if at least `case_agreement` of the solutions print the same output (the
majority output becomes the expected output); the problem is kept if at least
`problem_pass` of the solutions pass every kept case. The report used 50 cases, 7 of 10
and 9 of 10; those are the defaults.

A problem folder holds `statement.md`, `gen.py` (reads a seed on stdin, prints one
input) and `solutions/*.py`. Kept problems are written as JSONL rows
{"id", "prompt", "test_cases": [{"input", "output"}], "verifier": "code_tests"}, which
the data loaders read as code prompts (tests in `Prompt.meta["test_cases"]`).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from k15rl.data.readers import bad_text, read_text_file
from k15rl.errors import UserError
from k15rl.verifiers.sandbox import FLOAT_TOLERANCE, Limits, TestOutcome, normalize_output, outputs_match, run_outputs


@dataclass(frozen=True)
class CodeTestsConfig:
    cases: int = 50  # candidate inputs generated per problem (report: 50)
    case_agreement: float = 0.7  # fraction of solutions that must agree on a case's output (report: 7 of 10)
    problem_pass: float = 0.9  # fraction of solutions that must pass every kept case (report: 9 of 10)
    min_cases: int = 1  # a problem with fewer kept cases is dropped
    seed: int = 0
    workers: int = 2  # sandboxes in parallel
    limits: Limits = Limits()


@dataclass
class ProblemDir:
    id: str
    statement: str
    generator: str
    solutions: dict[str, str]  # file name -> source


@dataclass
class ProblemReport:
    id: str
    generated: int = 0  # distinct candidate inputs
    generator_failures: int = 0
    kept_cases: int = 0
    passing_solutions: int = 0
    solutions: int = 0
    kept: bool = False
    tests: list[dict] = field(default_factory=list)
    failing_solutions: list[str] = field(default_factory=list)


@dataclass
class Funnel:
    """The counts the report gives: problems and cases in, cases and problems kept."""

    problems: int = 0
    candidate_cases: int = 0
    kept_cases: int = 0
    problems_with_cases: int = 0
    kept_problems: int = 0

    def lines(self) -> list[str]:
        return [
            f"problems:                      {self.problems}",
            f"candidate test cases:          {self.candidate_cases}",
            f"cases kept (solutions agree):  {self.kept_cases}",
            f"problems with enough cases:    {self.problems_with_cases}",
            f"problems kept (solutions pass): {self.kept_problems}",
        ]


def needed(fraction: float, n: int) -> int:
    """How many of n make `fraction` (7 of 10 for 0.7).

    >>> needed(0.7, 10), needed(0.9, 10), needed(0.9, 5), needed(1.0, 3)
    (7, 9, 5, 3)
    """
    return max(1, math.ceil(fraction * n - 1e-9))


def load_problem_dirs(root: str | Path) -> list[ProblemDir]:
    """The problem folders under `root` (each with statement.md, gen.py, solutions/*.py)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--problems {root}: not a folder")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for need in ("statement.md", "gen.py", "solutions"):
            if not (d / need).exists():
                raise UserError(f"{d}: missing {need} (a problem folder holds statement.md, gen.py, solutions/*.py)")
        sols = {p.name: read_text_file(p) for p in sorted((d / "solutions").glob("*.py"))}
        if len(sols) < 2:
            raise UserError(f"{d / 'solutions'}: needs at least 2 reference solutions, found {len(sols)}")
        statement = read_text_file(d / "statement.md").strip()
        if bad_text(statement):  # the statement becomes a prompt
            raise UserError(f"{d / 'statement.md'}: {bad_text(statement)}")
        out.append(ProblemDir(d.name, statement, read_text_file(d / "gen.py"), sols))
    if not out:
        raise UserError(f"--problems {root}: no problem folders in it")
    return out


GENERATOR_PACKAGES = ("cyaron", "colorful", "xeger")  # cyaron and what it imports


def _generator_packages() -> tuple[str, ...]:
    """Packages generator scripts may import in the sandbox (bound there read-only)."""
    import importlib.util

    if importlib.util.find_spec("cyaron") is None:
        raise UserError("codetests needs cyaron for generator scripts: pip install 'k15rl[code]'")
    return GENERATOR_PACKAGES


def select_cases(outputs: dict[str, list[TestOutcome]], inputs: Sequence[str], cfg: CodeTestsConfig
                 ) -> tuple[list[dict], list[str]]:
    """Kept cases (majority output agreed by enough solutions) and the solutions that fail
    any kept case. `outputs[solution][i]` is what solution printed on inputs[i].

    >>> ok = lambda s: TestOutcome("pass", s)
    >>> outs = {"a": [ok("1"), ok("5")], "b": [ok("1"), ok("6")], "c": [ok("2"), ok("7")]}
    >>> select_cases(outs, ["x", "y"], CodeTestsConfig(case_agreement=0.6, problem_pass=0.6))
    ([{'input': 'x', 'output': '1'}], ['c'])
    >>> floats = {"a": [ok("0.3333333333")], "b": [ok("0.33333333")], "c": [ok("0.3")]}
    >>> select_cases(floats, ["x"], CodeTestsConfig(case_agreement=0.6, problem_pass=0.6))
    ([{'input': 'x', 'output': '0.3333333333'}], ['c'])
    """
    n = len(outputs)
    kept, kept_idx = [], []
    for i, inp in enumerate(inputs):
        printed = [o[i].stdout for o in outputs.values() if o[i].reason == "pass"]
        if not printed:
            continue
        # the output most solutions agree with, as grading compares outputs (real numbers
        # within FLOAT_TOLERANCE); among equals, the one printed most often
        out, count = max(((c, sum(outputs_match(x, c, FLOAT_TOLERANCE) for x in printed))
                          for c, _ in Counter(map(normalize_output, printed)).most_common()), key=lambda t: t[1])
        if count >= needed(cfg.case_agreement, n):
            kept.append({"input": inp, "output": out})
            kept_idx.append(i)
    failing = [name for name, o in outputs.items()
               if any(o[i].reason != "pass" or not outputs_match(o[i].stdout, kept[j]["output"], FLOAT_TOLERANCE)
                      for j, i in enumerate(kept_idx))]
    return kept, failing


def validate_problem(p: ProblemDir, cfg: CodeTestsConfig, pool: ThreadPoolExecutor,
                     progress: Callable[[int], None] = lambda n: None) -> ProblemReport:
    """Generate, run, vote, keep or drop one problem."""
    rep = ProblemReport(p.id, solutions=len(p.solutions))
    seeds = [str(cfg.seed * 1_000_003 + i) for i in range(cfg.cases)]
    gen = run_outputs(p.generator, seeds, cfg.limits, packages=_generator_packages())
    progress(1)
    rep.generator_failures = sum(o.reason != "pass" for o in gen)
    inputs = list(dict.fromkeys(o.stdout for o in gen if o.reason == "pass" and o.stdout.strip()))
    rep.generated = len(inputs)
    futures = {name: pool.submit(run_outputs, src, inputs, cfg.limits) for name, src in p.solutions.items()}
    outputs = {}
    for name, fut in futures.items():
        outputs[name] = fut.result()
        progress(1)
    kept, failing = select_cases(outputs, inputs, cfg) if inputs else ([], list(p.solutions))
    rep.tests, rep.kept_cases, rep.failing_solutions = kept, len(kept), failing
    rep.passing_solutions = len(p.solutions) - len(failing)
    rep.kept = rep.kept_cases >= cfg.min_cases and rep.passing_solutions >= needed(cfg.problem_pass, len(p.solutions))
    return rep


def run_codetests(problems: Sequence[ProblemDir], cfg: CodeTestsConfig) -> tuple[list[ProblemReport], Funnel]:
    """Validate every problem (with a tqdm bar) and count the funnel."""
    from tqdm import tqdm

    total = sum(1 + len(p.solutions) for p in problems)
    reports = []
    with ThreadPoolExecutor(cfg.workers) as pool, tqdm(total=total, desc="codetests", unit="run") as bar:
        for p in problems:
            reports.append(validate_problem(p, cfg, pool, bar.update))
    f = Funnel(problems=len(problems), candidate_cases=sum(r.generated for r in reports),
               kept_cases=sum(r.kept_cases for r in reports),
               problems_with_cases=sum(r.kept_cases >= cfg.min_cases for r in reports),
               kept_problems=sum(r.kept for r in reports))
    return reports, f


def write_problems(reports: Sequence[ProblemReport], problems: Sequence[ProblemDir], out: str | Path) -> int:
    """Kept problems as JSONL rows for the data loaders. Returns how many were written."""
    by_id = {p.id: p for p in problems}
    n = 0
    tmp = Path(str(out) + ".tmp")
    with open(tmp, "w") as f:
        for r in reports:
            if r.kept:
                f.write(json.dumps({"id": r.id, "prompt": by_id[r.id].statement, "test_cases": r.tests,
                                    "verifier": "code_tests"}) + "\n")
                n += 1
    os.replace(tmp, out)
    return n
