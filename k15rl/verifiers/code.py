"""Code rewards: run the program a response contains against the problem's tests
(report §2.3.5, RECIPE §7). r = 1 iff every test passes in the sandbox.

Where the tests live (the contract with tasks and data loaders):
- `Prompt.meta["tests"]`: stdin/stdout cases, a list of {"input": str, "output": str};
- `Prompt.meta["check"]` and `Prompt.meta["entry_point"]`: function-call test code
  defining `check(candidate)` (HumanEval style); `meta["prefix"]` (optional) is code put
  before the response's program when the program does not define the entry point
  itself (HumanEval's function header and imports);
- or the same keys as a JSON object in `Prompt.answer`, so that the plain verifier
  signature `(response, answer)` works too (`verify_code`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from k15rl.types import Prompt
from k15rl.verifiers.sandbox import Limits, RunResult, StdioTest
from k15rl.verifiers.sandbox_pool import CodeJob, grade

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(response: str) -> str | None:
    """The program of a response: the last fenced block marked python (or unmarked).

    >>> extract_program("plan\\n```python\\nprint(1)\\n```\\nanswer above")
    'print(1)\\n'
    >>> extract_program("```text\\nno\\n```") is None
    True
    >>> extract_program("no code") is None
    True
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(response)]
    code = [body for lang, body in blocks if lang in ("python", "py", "python3", "")]
    return code[-1] if code else None


def job_from_spec(program: str, spec: Mapping[str, Any]) -> CodeJob:
    """A `CodeJob` from a test spec ({"tests": [...]} or {"check", "entry_point", "prefix"}).

    Raises ValueError for a spec without tests, naming what is missing or malformed.
    """
    if spec.get("check") is not None:
        entry = spec.get("entry_point")
        if not isinstance(entry, str) or not entry:
            raise ValueError("function-call tests need meta['entry_point'] (a function name)")
        prefix = spec.get("prefix") or ""
        if prefix and not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", program, re.MULTILINE):
            program = prefix + program  # a completion of the given function header
        # the prefix (the problem's header and helpers, from the dataset) also defines the
        # helpers the tests call, in the judge: the program cannot redefine them there
        return CodeJob(program, check=str(spec["check"]), entry_point=entry, setup=prefix or None)
    tests = spec.get("tests")
    if not isinstance(tests, list) or not tests:
        raise ValueError("no tests: expected meta['tests'] (a non-empty list) or meta['check']")
    cases = []
    for i, t in enumerate(tests):
        if not isinstance(t, Mapping) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise ValueError(f"tests[{i}] must be {{'input': str, 'output': str}} (got {t!r:.80})")
        cases.append(StdioTest(t["input"], t["output"]))
    return CodeJob(program, tests=tuple(cases))


def _from_test_cases(cases: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A spec from a data row's `test_cases` field in its common shapes: a list of
    {"input", "output"}; {"inputs": [...], "outputs": [...]} (APPS/TACO, with "fn_name"
    for call-based problems); {"check"/"test": code, "entry_point": name}."""
    if isinstance(cases, list):
        return {"tests": cases}
    if isinstance(cases, Mapping):
        if "check" in cases or "test" in cases:
            return {"check": cases.get("check", cases.get("test")),
                    "entry_point": cases.get("entry_point", meta.get("entry_point")),
                    "prefix": cases.get("prefix", meta.get("prefix"))}
        if "inputs" in cases and "outputs" in cases:
            ins, outs = cases["inputs"], cases["outputs"]
            if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
                raise ValueError("test_cases: 'inputs' and 'outputs' must be lists of equal length")
            if cases.get("fn_name"):  # APPS wraps a return value in a list: accept both
                check = (f"CASES = {list(zip(ins, outs))!r}\n\ndef check(candidate):\n    for args, want in CASES:\n"
                         "        got = candidate(*args)\n        assert got == want or [got] == want\n")
                return {"check": check, "entry_point": cases["fn_name"]}
            return {"tests": [{"input": _text(i), "output": _text(o)} for i, o in zip(ins, outs)]}
    if isinstance(cases, str) and "def check" in cases:
        return {"check": cases, "entry_point": meta.get("entry_point"), "prefix": meta.get("prefix")}
    raise ValueError(f"test_cases of an unknown shape: {str(cases)[:80]!r}")


def _text(v: Any) -> str:
    return "\n".join(map(str, v)) if isinstance(v, list) else str(v)


def spec_of(prompt: Prompt) -> Mapping[str, Any]:
    """The test spec of a prompt: from its meta ("tests", "check", or a data row's
    "test_cases"), else the JSON answer."""
    if "tests" in prompt.meta or "check" in prompt.meta:
        return prompt.meta
    if "test_cases" in prompt.meta:
        return _from_test_cases(prompt.meta["test_cases"], prompt.meta)
    try:
        spec = json.loads(prompt.answer)
    except (json.JSONDecodeError, TypeError):
        raise ValueError(f"prompt {prompt.id}: no tests in meta and the answer is not a JSON test spec") from None
    if not isinstance(spec, dict):
        raise ValueError(f"prompt {prompt.id}: the answer's JSON test spec must be an object")
    return spec


def grade_response(response: str, spec: Mapping[str, Any], limits: Limits = Limits(), *,
                   isolation: str = "auto") -> RunResult:
    """Extract the program of `response` and run it against `spec`'s tests."""
    program = extract_program(response)
    if program is None:
        return RunResult("runtime_error", 0, 1, "no ```python block in the response")
    return grade(job_from_spec(program, spec), limits, isolation=isolation)


def code_reward(response: str, prompt: Prompt, limits: Limits = Limits(), *, isolation: str = "auto") -> float:
    """1.0 if the response's program passes every test of the prompt, else 0.0."""
    return grade_response(response, spec_of(prompt), limits, isolation=isolation).reward


def verify_code(response: str, answer: str) -> bool:
    """Verifier form `(response, answer)`, the answer being a JSON test spec.

    >>> spec = json.dumps({"tests": [{"input": "2 3", "output": "5"}]})
    >>> verify_code("```python\\na, b = map(int, input().split())\\nprint(a + b)\\n```", spec)
    True
    >>> verify_code("```python\\nprint(6)\\n```", spec)
    False
    """
    return grade_response(response, json.loads(answer)).reason == "pass"
