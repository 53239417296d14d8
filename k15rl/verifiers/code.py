"""Code rewards: run the program a response contains against the problem's tests
(report §2.3.5, RECIPE §7). r = 1 iff every test passes in the sandbox.

Where the tests live (the contract with tasks and data loaders):
- `Prompt.meta["tests"]`: stdin/stdout cases, a list of {"input": str, "output": str};
- `Prompt.meta["check"]` and `Prompt.meta["entry_point"]`: function-call test code
  defining `check(candidate)` (HumanEval style); `meta["prefix"]` (optional) is code put
  before the response's program when the program does not define the entry point
  itself (HumanEval's function header and imports). The entry point is a function name,
  or `Class().method` (LeetCode's `Solution().twoSum`); a bare name that only a class of
  the program defines as a method is served the same way;
- or the same keys as a JSON object in `Prompt.answer`, so that the plain verifier
  signature `(response, answer)` works too (`verify_code`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from k15rl.types import Prompt
from k15rl.verifiers.sandbox import FLOAT_TOLERANCE, Limits, RunResult, StdioTest
from k15rl.verifiers.sandbox_pool import CodeJob, grade

# A fence line: ``` or ~~~ (three or more), then an info string whose first word is the language.
_FENCE = re.compile(r"(`{3,}|~{3,})(.*)")
_PYTHON = re.compile(r"py(?:thon)?[0-9.]*")  # python, py, python3, py3, python3.11


def _fenced_blocks(response: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order, read line by line (time linear in
    the response). A fence may be indented (a list item: its body loses as much
    indentation; a body indented under an unindented fence stays so, a completion); a block
    closes at a line of the same fence character, at least as long; the last block may
    be left open (a response cut at a stop string or its token budget)."""
    lines = response.replace("\r\n", "\n").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        indent = len(lines[i]) - len(lines[i].lstrip(" \t"))
        m = _FENCE.match(lines[i][indent:])
        if not m or (m.group(1)[0] == "`" and "`" in m.group(2)):  # inline ```code``` is no fence
            i += 1
            continue
        fence, info = m.group(1), m.group(2).strip()
        body, i = [], i + 1
        while i < len(lines):
            t = lines[i].strip()
            if len(t) >= len(fence) and t == fence[0] * len(t):
                break
            line = lines[i]
            cut = len(line) - len(line.lstrip(" \t"))
            body.append(line[min(cut, indent):])  # a fence indented in a list item: its body too
            i += 1
        i += 1  # past the closing fence
        lang = info.split()[0].lower().strip("{}.") if info else ""  # also ```{python} and ```{.python}
        blocks.append((lang, "\n".join(body) + "\n" if body else ""))
    return blocks


def extract_program(response: str, entry_point: str | None = None) -> str | None:
    """The program of a response: the last fenced block marked python, else the last
    unmarked one (a bare block after the code is usually its sample output). With
    `entry_point`, the last such block that defines it, if one does (a solution followed
    by an example of its use).

    >>> extract_program("plan\\n```python\\nprint(1)\\n```\\nanswer above")
    'print(1)\\n'
    >>> extract_program("```python\\nprint(1)\\n```\\noutput:\\n```\\n1\\n```")
    'print(1)\\n'
    >>> extract_program("```python title=x\\nprint(4)\\n```\\nthen print(5)\\n```")
    'print(4)\\n'
    >>> extract_program("```text\\nno\\n```") is None
    True
    >>> extract_program("no code") is None
    True
    """
    blocks = [(lang, body) for lang, body in _fenced_blocks(response) if body.strip()]
    code = [body for lang, body in blocks if _PYTHON.fullmatch(lang)] or [body for lang, body in blocks if not lang]
    if entry_point is not None:
        defining = [b for b in code if _defines(b, entry_point)]
        code = defining or code
    return code[-1] if code else None


def _defines(program: str, name: str) -> bool:
    """Whether `program` has a `def name(` line (of the method, for `Class().method`)."""
    name = name.rpartition(".")[2]
    return re.search(rf"^[ \t]*def[ \t]+{re.escape(name)}[ \t]*\(", program, re.MULTILINE) is not None


def _imports_of(prefix: str) -> str:
    """The import statements at the top level of `prefix` (whole, also across lines; no
    `__future__` ones), as source. A prefix ending in a bare function header is parsed
    with a body added."""
    import ast

    for source in (prefix, prefix + "\n    pass\n"):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        return "".join(ast.get_source_segment(source, n) + "\n" for n in tree.body
                       if isinstance(n, ast.Import) or (isinstance(n, ast.ImportFrom) and n.module != "__future__"))
    return ""


def _with_imports(program: str, imports: str) -> str:
    r"""`imports` put into `program` after its `from __future__` lines (which must come first).

    >>> _with_imports("from __future__ import annotations\ndef f(): pass\n", "import math\n")
    'from __future__ import annotations\nimport math\ndef f(): pass\n'
    """
    lines = program.splitlines(keepends=True)
    at = 0
    for i, line in enumerate(lines):
        if re.match(r"from[ \t]+__future__[ \t]+import", line):
            at = i + 1
    return "".join(lines[:at]) + imports + "".join(lines[at:])


def entry_point_of(spec: Mapping[str, Any]) -> str:
    """The spec's entry point: a function name, or `Class().method`. Raises ValueError,
    naming it, for anything else.

    >>> entry_point_of({"entry_point": " Solution().twoSum "})
    'Solution().twoSum'
    """
    import keyword

    entry = spec.get("entry_point")
    name, dot, method = entry.strip().partition("().") if isinstance(entry, str) else ("", "", "")
    if any(not n.isidentifier() or keyword.iskeyword(n) for n in ([name, method] if dot else [name])):
        raise ValueError(f"function-call tests need an entry_point, a function name or Class().method "
                         f"(got {entry!r:.80})")
    return entry.strip()


def job_from_spec(program: str, spec: Mapping[str, Any]) -> CodeJob:
    """A `CodeJob` from a test spec ({"tests": [...]} or {"check", "entry_point", "prefix"}).

    Raises ValueError for a spec without tests, naming what is missing or malformed.
    """
    if spec.get("check") is not None:
        entry = entry_point_of(spec)
        prefix = spec.get("prefix") or ""
        if not _defines(program, entry):
            program = prefix + program  # a completion of the given function header
        elif prefix:  # a whole function: the header's imports (typing's List, ...) still count
            program = _with_imports(program, _imports_of(prefix))
        # the prefix (the problem's header and helpers, from the dataset) also defines the
        # helpers the tests call, in the judge: the program cannot redefine them there
        cases = spec.get("cases", 1)
        if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
            raise ValueError(f"cases must be a whole number >= 1 (got {cases!r:.40})")
        return CodeJob(program, check=str(spec["check"]), entry_point=entry, setup=prefix or None, cases=cases)
    tests = spec.get("tests")
    if not isinstance(tests, list) or not tests:
        raise ValueError("no tests: expected meta['tests'] (a non-empty list) or meta['check']")
    cases = []
    for i, t in enumerate(tests):
        if not isinstance(t, Mapping) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise ValueError(f"tests[{i}] must be {{'input': str, 'output': str}} (got {t!r:.80})")
        cases.append(StdioTest(t["input"], t["output"]))
    if not any(c.output.strip() for c in cases):
        raise ValueError("every test expects no output: a program that prints nothing would pass them all")
    tolerance = spec.get("float_tolerance", FLOAT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"float_tolerance must be a number in [0, 1) (got {tolerance!r:.40})")
    ignore_case = spec.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise ValueError(f"ignore_case must be true or false (got {ignore_case!r:.40})")
    return CodeJob(program, tests=tuple(cases), float_tolerance=float(tolerance), ignore_case=ignore_case)


def _from_test_cases(cases: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A spec from a data row's `test_cases` field in its common shapes: a list of
    {"input", "output"}; {"inputs": [...], "outputs": [...]} (APPS/TACO, with "fn_name"
    for call-based problems; "float_tolerance" and "ignore_case" for stdio ones); {"check"/"test": code,
    "entry_point": name}; MBPP's assert lines, as a list or as {"test_list": [...],
    "test_setup_code", "test_imports"}."""
    if isinstance(cases, list) and cases and all(isinstance(c, str) for c in cases):
        return _asserts_spec(cases, meta)
    if isinstance(cases, list):
        return {"tests": cases}
    if isinstance(cases, Mapping):
        if "check" in cases or "test" in cases:
            return {"check": cases.get("check", cases.get("test")),
                    "entry_point": cases.get("entry_point", meta.get("entry_point")),
                    "prefix": cases.get("prefix", meta.get("prefix"))}
        if "test_list" in cases:
            if not isinstance(cases["test_list"], list) or not all(isinstance(c, str) for c in cases["test_list"]):
                raise ValueError("test_cases: 'test_list' must be a list of assert lines")
            return _asserts_spec(cases["test_list"], {**meta, **cases})
        if "inputs" in cases and "outputs" in cases:
            ins, outs = cases["inputs"], cases["outputs"]
            if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
                raise ValueError("test_cases: 'inputs' and 'outputs' must be lists of equal length")
            if cases.get("fn_name"):  # APPS wraps a return value in a list, and reads a tuple as a list
                # the cases travel as one JSON string: a literal of their values, compiled
                # as source, takes far more memory (5 cases of 100,000 integers: MemoryError)
                cases_json = json.dumps(list(zip(ins, outs)), allow_nan=False) if _is_json(ins + outs) else None
                if cases_json is None:
                    raise ValueError("test_cases: call-based inputs and outputs must be JSON data (no sets, bytes, "
                                     "NaN or non-string keys): they reach the tests as JSON")
                check = (f"import json\nCASES = json.loads({cases_json!r})\n\n"
                         "def check(candidate):\n    for args, want in CASES:\n"
                         "        got = candidate(*args)\n        if isinstance(got, tuple):\n"
                         "            got = list(got)\n        assert got == want or [got] == want\n")
                return {"check": check, "entry_point": cases["fn_name"], "cases": len(ins)}
            spec: dict[str, Any] = {"tests": [{"input": _text(i), "output": _text(o)} for i, o in zip(ins, outs)]}
            spec.update({k: cases[k] for k in ("float_tolerance", "ignore_case") if k in cases})
            return spec
    if isinstance(cases, str) and "def check" in cases:
        return {"check": cases, "entry_point": meta.get("entry_point"), "prefix": meta.get("prefix")}
    raise ValueError(f"test_cases of an unknown shape: {str(cases)[:80]!r}")


def _is_json(value: Any, depth: int = 0) -> bool:
    """Whether `value` survives a JSON round trip as it is (lists for tuples aside)."""
    if depth > 100:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, (list, tuple)):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _asserts_spec(asserts: list[str], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Function-call tests from MBPP's top-level `assert` lines, which call the function by
    name: they become the body of `check(candidate)` (after the row's test imports and
    set-up code), one case each; the entry point is the row's, else the first function
    the first assert calls that neither the imports nor the set-up define."""
    import ast
    import builtins

    lines = [a.strip() for a in asserts if a.strip()]
    imports = meta.get("test_imports") or []
    setup = meta.get("test_setup_code") or ""
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports) or not isinstance(setup, str):
        raise ValueError("test_cases: 'test_imports' must be a list of strings and 'test_setup_code' a string")
    header = "".join(i + "\n" for i in imports) + setup + "\n"
    try:
        body = ast.parse("\n".join(lines)).body
    except SyntaxError as e:
        raise ValueError(f"the tests do not parse: {e}") from None
    if not body or not all(isinstance(node, ast.Assert) for node in body):
        raise ValueError("test_cases: a list of strings must be assert statements (MBPP's test_list)")
    # each statement written back on one line (string literals escaped), so that indenting
    # it under check() changes nothing inside a multi-line string
    asserts = [ast.unparse(node) for node in body]
    entry = meta.get("entry_point")
    if not entry:  # the first function the first assert calls that neither the imports nor the set-up define
        free = _free_names(header + asserts[0])  # none where a star import binds names not known here
        called = [n.func.id for n in ast.walk(body[0]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        calls = [c for c in called if c in free]
        if not calls and "*" in header:  # after a star import, only a call that cannot be anything else
            calls = [c for c in dict.fromkeys(called) if not hasattr(builtins, c)]
            calls = calls if len(calls) == 1 else []
        if not calls:
            raise ValueError(f"cannot tell which function {lines[0][:60]!r} tests: give the row an entry_point")
        entry = calls[0]
    check = header + "\n\ndef check(candidate):\n" + "".join(f"    {a}\n" for a in asserts)
    return {"check": check, "entry_point": entry, "prefix": meta.get("prefix"), "cases": len(asserts)}


def check_test_cases(cases: Any, meta: Mapping[str, Any]) -> None:
    """Raise ValueError, saying why, for a data row's `test_cases` that cannot grade a
    program fairly: an unknown shape, no tests, expected outputs that are all empty (a
    program printing nothing passes), or function-call tests that use a name neither they
    nor a trusted `prefix` define (such as a helper of the problem's): the program would
    define it, and could define it to pass.

    >>> check_test_cases({"test": "def check(c): assert c(2) == helper(2)", "entry_point": "f"}, {})
    Traceback (most recent call last):
    ValueError: the tests use helper, defined by neither them nor a prefix: add its import, or the problem's code as test_cases' "prefix" (else the graded program defines it)
    """
    spec = _from_test_cases(cases, meta)
    job_from_spec("", spec)
    generated = isinstance(cases, Mapping) and bool(cases.get("fn_name"))  # our own check: no helpers
    if spec.get("check") is not None and not spec.get("prefix") and not generated:
        free = sorted(_free_names(str(spec["check"])) - {"candidate", entry_point_of(spec)})
        if free:
            raise ValueError(f"the tests use {', '.join(free[:5])}, defined by neither them nor a prefix: add its "
                             "import, or the problem's code as test_cases' \"prefix\" "
                             "(else the graded program defines it)")


def _free_names(code: str) -> set[str]:
    """Names `code` reads that it never binds and that are not builtins (none where it
    star-imports: what that binds is not known here)."""
    import ast
    import builtins

    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise ValueError(f"the tests do not parse: {e}") from None
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return set()
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return {n for n in loaded - bound if not hasattr(builtins, n)}


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
    program = extract_program(response, entry_point_of(spec) if spec.get("check") is not None else None)
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
