"""Prompt-set loading (report §2.1): every format, the TRL and verl layouts, every
bad-row case, duplicates, held-out splits and the context-length filter."""

import csv
import gzip
import json
import re
from pathlib import Path

import pytest

from k15rl.config import DataConfig, load_config
from k15rl.data import build_prompt_sets, fit_context, load_file, prompt_to_row
from k15rl.data.build import unique_ids
from k15rl.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
ROWS = [
    {"problem": "What is 2 + 3?", "answer": "5", "difficulty": 1, "domain": "arith"},
    {"problem": "Solve 2x = 8.", "answer": "4", "difficulty": 2, "domain": "algebra"},
    {"problem": "Factor a^2-4.", "answer": "(a-2)(a+2)", "difficulty": 3, "domain": "algebra"},
]
EXPECTED = [((("user", r["problem"]),), r["answer"], r["difficulty"], r["domain"]) for r in ROWS]


def data_cfg(**kw) -> DataConfig:
    return load_config(None, [f"data.{k}={v}" for k, v in kw.items()]).data


def summary(prompts):
    return [(p.messages, p.answer, p.level, p.meta.get("domain")) for p in prompts]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def _jsonl(d):
    return write_jsonl(d / "a.jsonl", ROWS)


def _jsonl_gz(d):
    p = d / "a.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def _json_array(d):
    (d / "a.json").write_text(json.dumps(ROWS))
    return d / "a.json"


def _json_object(d):
    (d / "a.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    return d / "a.json"


def _json_lines_in_json(d):  # what datasets' Dataset.to_json writes
    return write_jsonl(d / "a.json", ROWS)


def _csv(d):
    return write_csv(d / "a.csv", ROWS)


def _tsv(d):
    return write_csv(d / "a.tsv", ROWS, delimiter="\t")


def _parquet(d):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), d / "a.parquet")
    return d / "a.parquet"


def _datasets_folder(d):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(d / "ds"))
    return d / "ds"


@pytest.mark.parametrize("make", [_jsonl, _jsonl_gz, _json_array, _json_object, _json_lines_in_json, _csv, _tsv,
                                  _parquet, _datasets_folder])
def test_every_format_loads_the_same_prompts(tmp_path, make):
    lines = []
    prompts, report = load_file(make(tmp_path), data_cfg(), lines.append)
    assert summary(prompts) == EXPECTED
    assert [p.task for p in prompts] == ["math"] * 3
    assert [p.meta["difficulty"] for p in prompts] == [1.0, 2.0, 3.0]
    assert report.rows == report.kept == 3 and report.skipped == 0
    assert len(lines) == 1 and "3 rows, 3 prompts" in lines[0]


def test_trl_prompt_as_chat_list(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
         "solution": "We add: \\boxed{2}."},
    ])
    (p,), _ = load_file(f, data_cfg(), lambda s: None)
    assert p.messages == (("system", "Be brief."), ("user", "1+1?")) and p.answer == "2"


def test_trl_messages_with_reference_reply(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [
        {"messages": [{"role": "user", "content": "3*4?"}, {"role": "assistant", "content": "3*4 = \\boxed{12}"}]},
    ])
    (p,), _ = load_file(f, data_cfg(), lambda s: None)
    assert p.messages == (("user", "3*4?"),) and p.answer == "12"


def test_verl_layout(tmp_path):
    row = {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "6/2?"}], "ability": "math",
           "reward_model": {"style": "rule", "ground_truth": "3"}, "extra_info": {"split": "train", "index": 7}}
    (p,), _ = load_file(write_jsonl(tmp_path / "v.jsonl", [row]), data_cfg(), lambda s: None)
    assert p.answer == "3" and p.meta["domain"] == "openai/gsm8k" and p.meta["extra_info"]["index"] == 7


def test_gsm8k_and_math_solutions_reduce_to_the_answer(tmp_path):
    f = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "q1", "answer": "5 + 2 = 7 apples\n#### 7"},
        {"problem": "q2", "solution": "so \\boxed{\\frac{1}{2}}", "level": "Level 5", "type": "Algebra"},
    ])
    (p1, p2), _ = load_file(f, data_cfg(), lambda s: None)  # fields are found row by row
    assert p1.answer == "7" and p1.level == 0
    assert (p2.answer, p2.level, p2.meta["domain"]) == ("\\frac{1}{2}", 5, "Algebra")


def test_explicit_column_mapping_with_nested_fields(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"q": {"text": "1+2?"}, "gt": {"value": 3}, "hard": "medium", "tag": "x"}])
    cfg = data_cfg(**{"columns.prompt": "q.text", "columns.answer": "gt.value", "columns.difficulty": "hard",
                      "columns.domain": "tag"})
    (p,), _ = load_file(f, cfg, lambda s: None)
    assert (p.question, p.answer, p.meta["difficulty"], p.meta["domain"]) == ("1+2?", "3", 2.0, "x")


def test_row_verifier_and_test_cases(tmp_path):
    f = write_jsonl(tmp_path / "v.jsonl", [
        {"prompt": "Sort these letters: c a b.", "answer": "a b c", "verifier": "sort"},
        {"prompt": "Write f.", "test_cases": json.dumps([{"input": "1", "output": "2"}])},
    ])
    (a, b), _ = load_file(f, data_cfg(), lambda s: None)
    assert a.task == "sort" and b.task == "math"
    assert b.answer == "" and b.meta["test_cases"] == [{"input": "1", "output": "2"}]


def test_csv_cell_with_a_chat_list(tmp_path):
    chat = json.dumps([{"role": "user", "content": "2+2?"}])
    f = write_csv(tmp_path / "c.csv", [{"prompt": chat, "answer": "4"}])
    (p,), _ = load_file(f, data_cfg(), lambda s: None)
    assert p.messages == (("user", "2+2?"),)


def test_system_prompt_added_once(tmp_path):
    f = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "1+1?", "answer": "2"},
        {"prompt": [{"role": "system", "content": "own"}, {"role": "user", "content": "2+2?"}], "answer": "4"},
    ])
    a, b = load_file(f, data_cfg(system_prompt="Think."), lambda s: None)[0]
    assert a.messages[0] == ("system", "Think.") and b.messages[0] == ("system", "own") and len(b.messages) == 2


# Bad rows: (rows written as JSON lines, where, field, words in the reason)
BAD = [
    (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": '], "line 2", None, "invalid JSON"),
    (['{"problem": "a", "answer": "1"}', '[1, 2]'], "line 2", None, "JSON object"),
    (['{"problem": "a", "answer": "1"}', '{"answer": "2"}'], "line 2", "prompt", "none of prompt, problem"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "  ", "answer": "2"}'], "line 2", "problem", "empty"),
    (['{"problem": "a", "answer": "1"}', '{"problem": 7, "answer": "2"}'], "line 2", "problem", "expected a string"),
    (['{"prompt": [{"role": "user", "content": "a"}], "answer": "1"}', '{"prompt": [{"content": "b"}], "answer": "2"}'],
     "line 2", "prompt", "role"),
    (['{"prompt": [{"role": "user", "content": "a"}], "answer": "1"}',
      '{"prompt": [{"role": "robot", "content": "b"}], "answer": "2"}'], "line 2", "prompt", "robot"),
    (['{"prompt": [{"role": "user", "content": "a"}], "answer": "1"}',
      '{"prompt": [{"role": "system", "content": "b"}], "answer": "2"}'], "line 2", "prompt", "end with a user"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "b"}'], "line 2", "answer", "missing"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": ["1", "2"]}'], "line 2", "answer", "one answer"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": "\\\\boxed{}"}'], "line 2", "answer", "empty"),
    (['{"problem": "a", "answer": "1", "difficulty": 2}', '{"problem": "b", "answer": "2", "difficulty": "tough"}'],
     "line 2", "difficulty", "not a difficulty"),
    (['{"problem": "a", "answer": "1", "pass_rate": 0.5}', '{"problem": "b", "answer": "2", "pass_rate": 1.5}'],
     "line 2", "pass_rate", "[0, 1]"),
    (['{"problem": "a", "answer": "1", "verifier": "math"}', '{"problem": "b", "answer": "2", "verifier": "chess"}'],
     "line 2", "verifier", "unknown verifier"),
]


@pytest.mark.parametrize("lines, where, field, why", BAD)
def test_bad_row_error_names_file_line_and_field(tmp_path, lines, where, field, why):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_file(f, data_cfg(), lambda s: None)
    msg = str(e.value)
    assert str(f) in msg and where in msg and why in msg and "\n" not in msg
    if field:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize("lines, where, field, why", BAD)
def test_bad_row_skip_counts_and_reports(tmp_path, lines, where, field, why):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    logged = []
    prompts, report = load_file(f, data_cfg(on_bad_row="skip"), logged.append)
    assert len(prompts) == 1 and report.skipped == 1 and report.rows == 2
    assert "1 bad rows skipped" in logged[0] and where in logged[0]


def test_bad_csv_row_and_parquet_row(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("problem,answer\nq1,1\nq2,2,surplus\n")
    with pytest.raises(UserError, match=r"b\.csv, line 3: 3 cells, the header has 2"):
        load_file(f, data_cfg(), lambda s: None)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"problem": "q1", "answer": "1"}, {"problem": "q2", "answer": None}]),
                   tmp_path / "b.parquet")
    with pytest.raises(UserError, match=r"b\.parquet, row 1, field 'answer': missing"):
        load_file(tmp_path / "b.parquet", data_cfg(), lambda s: None)


@pytest.mark.parametrize("name, content, needle", [
    ("missing.jsonl", None, "does not exist"),
    ("a.txt", "x", "unknown data format"),
    ("empty.jsonl", "\n\n", "no rows (empty dataset)"),
    ("empty.csv", "problem,answer\n", "no rows (empty dataset)"),
    ("allbad.jsonl", '{"problem": "a"}\n', "missing"),
    ("obj.json", '{"a": [1], "b": [2]}', "exactly one array"),
    ("broken.json", '[{"problem": "a",\n  "answer": }]', "line 2"),
    ("nofield.jsonl", '{"text": "a", "answer": "1"}\n', "data.columns.prompt"),
])
def test_file_level_errors(tmp_path, name, content, needle):
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    with pytest.raises(UserError, match=None) as e:
        load_file(f, data_cfg(on_bad_row="skip"), lambda s: None)
    assert needle in str(e.value) and name in str(e.value)


def test_datasetdict_folder_asks_for_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match="several splits"):
        load_file(tmp_path / "dd", data_cfg(), lambda s: None)
    prompts, _ = load_file(tmp_path / "dd" / "train", data_cfg(), lambda s: None)
    assert summary(prompts) == EXPECTED


def test_duplicates_removed_and_reported(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ROWS + [{"problem": "What is  2 + 3?", "answer": "6"}, ROWS[1]])
    logged = []
    sets = build_prompt_sets(data_cfg(train_files=f"[{f}]", test_fraction=0.0), logged.append)
    assert summary(sets.train) == EXPECTED
    assert sets.report.duplicates == 2 and sets.report.conflicting == 1
    assert any("2 duplicate prompts removed" in line and "1 with a different answer" in line for line in logged)


def test_train_prompts_in_the_test_files_are_removed(tmp_path):
    tr = write_jsonl(tmp_path / "tr.jsonl", ROWS)
    te = write_jsonl(tmp_path / "te.jsonl", ROWS[:1])
    logged = []
    sets = build_prompt_sets(data_cfg(train_files=f"[{tr}]", test_files=f"[{te}]"), logged.append)
    assert [p.answer for p in sets.train] == ["4", "(a-2)(a+2)"] and [p.answer for p in sets.test] == ["5"]
    assert sets.report.overlap == 1 and any("1 train prompts removed" in line for line in logged)


def test_test_fraction_is_a_stable_disjoint_split(tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(400)]
    f = write_jsonl(tmp_path / "many.jsonl", rows)
    a = build_prompt_sets(data_cfg(train_files=f"[{f}]", test_fraction=0.25), lambda s: None)
    write_jsonl(f, rows[::-1])  # order does not matter
    b = build_prompt_sets(data_cfg(train_files=f"[{f}]", test_fraction=0.25), lambda s: None)
    assert {p.question for p in a.test} == {p.question for p in b.test}
    assert not {p.question for p in a.train} & {p.question for p in a.test}
    assert len(a.train) + len(a.test) == 400 and 70 <= len(a.test) <= 130


def test_files_alone_replace_the_default_task_and_mix_when_asked(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", ROWS)
    files_only = build_prompt_sets(data_cfg(train_files=f"[{f}]"), lambda s: None)
    assert {p.task for p in files_only.train} == {"math"} and files_only.test == []
    mixed = build_prompt_sets(data_cfg(train_files=f"[{f}]", tasks="[sort]", train_per_level=3, test_per_level=2,
                                       train_levels="[1]", test_levels="[1]"), lambda s: None)
    assert sorted(p.task for p in mixed.train) == ["math"] * 3 + ["sort"] * 3 and len(mixed.test) == 2
    default = build_prompt_sets(DataConfig(train_per_level=2, test_per_level=1), lambda s: None)
    assert {p.task for p in default.train} == {"sort"}


def test_unique_ids_across_files(tmp_path):
    from k15rl.types import Prompt

    ps = unique_ids([Prompt("a", (("user", str(i)),), "", "math") for i in range(3)])
    assert [p.id for p in ps] == ["a", "a#2", "a#3"]


def test_fit_context_drops_long_prompts(tiny_model_dir):
    from k15rl.models.loading import load_tokenizer
    from k15rl.types import Prompt

    tok = load_tokenizer(tiny_model_dir)
    short = Prompt("s", (("user", "Sort these letters: b a."),), "a b", "sort")
    long = Prompt("l", (("user", "Sort these letters: " + "b a " * 200),), "a b", "sort", meta={"source": "f line 9"})
    logged = []
    kept, dropped = fit_context([short, long], tok, 100, "train", logged.append)
    assert kept == [short] and dropped == 1
    assert "1 train prompts longer than 100 tokens removed" in logged[0] and "f line 9" in logged[0]
    with pytest.raises(UserError, match="longer than 3 tokens"):
        fit_context([short], tok, 3, "train", logged.append)
    assert fit_context([long], tok, None)[0] == [long]


@pytest.mark.parametrize("override, key", [
    ("data.on_bad_row=ignore", "data.on_bad_row"),
    ("data.test_fraction=1.5", "data.test_fraction"),
    ("data.test_fraction=0.1 data.test_files=[t.jsonl]", "data.test_fraction"),
    ("data.verifier=chess", "data.verifier"),
    ("data.max_prompt_tokens=-1", "data.max_prompt_tokens"),
    ("data.columns.promt=q", "data.columns.promt"),
    ("sampler.difficulty=hardness", "sampler.difficulty"),
    ("sampler.hard_max_pass_rate=2", "sampler.hard_max_pass_rate"),
])
def test_data_config_errors_name_the_key(override, key):
    from k15rl.trainer.resolve import check_names

    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_names(load_config(None, override.split()))


@pytest.mark.parametrize("name", ["math.jsonl", "trl_chat.jsonl", "verl.parquet", "problems.csv"])
def test_shipped_examples_load(name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    prompts, report = load_file(EXAMPLES / name, data_cfg(), lambda s: None)
    assert report.skipped == 0 and len(prompts) == report.rows >= 12
    assert all(p.answer and p.question for p in prompts)


def test_prompt_rows_round_trip(tmp_path):
    from k15rl.data import write_jsonl as write_rows

    prompts, _ = load_file(EXAMPLES / "math.jsonl", data_cfg(), lambda s: None)
    out = tmp_path / "rt.jsonl"
    write_rows(out, (prompt_to_row(p) for p in prompts))
    again, _ = load_file(out, data_cfg(), lambda s: None)
    strip = [(p.id, p.messages, p.answer, p.task, p.level, p.meta.get("difficulty"), p.meta.get("domain"))
             for p in prompts]
    assert strip == [(p.id, p.messages, p.answer, p.task, p.level, p.meta.get("difficulty"), p.meta.get("domain"))
                     for p in again]


def test_export_builtin_task_loads_back_identically(tmp_path, capsys):
    from k15rl.cli import main
    from k15rl.tasks import get_task, make_prompts

    out = tmp_path / "sort.jsonl"
    assert main(["export-data", "--task", "sort", "--levels", "1,2", "--n", "5", "--out", str(out)]) == 0
    prompts, _ = load_file(out, data_cfg(), lambda s: None)
    expected = make_prompts(get_task("sort"), "train", 5, (1, 2), 0)
    assert [(p.messages, p.answer, p.task, p.level) for p in prompts] == \
        [(p.messages, p.answer, p.task, p.level) for p in expected]
    assert "wrote 10 prompts" in capsys.readouterr().out
    assert main(["export-data", "--task", "sort", "--levels", "1", "--n", "3", "--out", str(out)]) == 2  # exists
    assert len(out.read_text().splitlines()) == 10  # untouched
    assert main(["export-data", "--task", "sort", "--levels", "1", "--n", "3", "--out", str(out), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_export_reasoning_gym(tmp_path):
    pytest.importorskip("reasoning_gym")
    from k15rl.data.export import export_rows
    from k15rl.verifiers import verify_math

    rows = export_rows("rg:gsm_symbolic", levels=(), n=5, split="train", seed=1, log=lambda s: None)
    assert len(rows) == 5 and all(r["verifier"] == "math" and r["domain"] == "gsm_symbolic" for r in rows)
    assert all(verify_math(f"answer: {r['answer']}", r["answer"]) for r in rows)
    with pytest.raises(UserError, match="no_such_task"):
        export_rows("rg:no_such_task", levels=(), n=1, split="train", seed=0)


def test_cli_bad_row_is_one_line_exit_2(tmp_path, capsys):
    from k15rl.cli import main

    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b"}\n')
    code = main(["train", f"out={tmp_path / 'run'}", f"data.train_files=[{f}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(f) in err[0] and "line 2" in err[0] and "'answer'" in err[0]
    assert not (tmp_path / "run").exists()


def test_training_on_a_file_with_curriculum_by_label(tmp_path, tiny_model_dir):
    """The loop trains on a data file: held-out share, curriculum by the file's
    difficulty labels, prompts over data.max_prompt_tokens reported and excluded."""
    from k15rl.trainer.loop import train

    rows = [{"problem": f"Sort these letters: {' '.join('dcba'[:2 + i % 3])}.", "answer": "x",
             "difficulty": 1 + i % 3, "verifier": "sort", "id": f"r{i}"} for i in range(3)]
    rows += [{"problem": f"Sort these letters: {'e ' * (i + 1)}{i}.", "answer": "e", "difficulty": 1 + i % 3,
              "verifier": "sort"} for i in range(40)]
    rows.append({"problem": "Sort these letters: " + "z y " * 100, "answer": "y z", "difficulty": 3, "verifier": "sort"})
    f = write_jsonl(tmp_path / "sort.jsonl", rows)
    logged = []
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model_dir}", f"data.train_files=[{f}]", "data.test_fraction=0.2",
        "data.max_prompt_tokens=120", "iterations=2", "rollout.k=2", "rollout.prompts_per_iteration=3",
        "rollout.max_new_tokens=2", "threads=1", "sampler.name=curriculum", "sampler.difficulty=label",
        "sampler.warmup_iterations=1", "sampler.hard_min_level=3", "eval.every=0",
    ])
    summary = train(cfg, log=logged.append)
    assert any("44 rows, 44 prompts" in line for line in logged)
    assert any("prompts longer than 120 tokens removed" in line for line in logged)
    assert summary["iterations"] == 2 and 0 < summary["eval_prompts"] < 44


def test_cli_eval_without_test_prompts_is_a_clear_error(tmp_path, capsys, tiny_model_dir):
    from k15rl.cli import main

    f = write_jsonl(tmp_path / "m.jsonl", ROWS)
    code = main(["eval", "--model", str(tiny_model_dir), "--output", str(tmp_path / "e.json"),
                 f"data.train_files=[{f}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data.test_fraction" in err[0]


def test_few_shot_turns_come_before_every_builtin_prompt():
    """data.few_shot=N: N worked examples of the task (train split, lowest train level)
    as user/assistant turns after the system message, the same for every prompt."""
    from k15rl.config import load_config
    from k15rl.data.build import builtin_prompts
    from k15rl.tasks import get_task, split_of

    cfg = load_config(None, ["data.tasks=[arith]", "data.train_levels=[2,3]", "data.test_levels=[3]",
                             "data.train_per_level=6", "data.test_per_level=4", "data.few_shot=2",
                             "data.system_prompt=Be brief."])
    train, test = builtin_prompts(cfg.data)
    shots = train[0].messages[1:5]
    assert train[0].messages[0] == ("system", "Be brief.")
    assert [r for r, _ in shots] == ["user", "assistant", "user", "assistant"]
    assert all(p.messages[1:5] == shots and p.messages[5][0] == "user" and len(p.messages) == 6 for p in train + test)
    for (_, question), (_, solution) in zip(shots[::2], shots[1::2]):
        assert split_of(question) == "train" and len(re.findall(r"\d+", question)) == 4  # level 2: 4 terms
        assert get_task("arith").verify(solution, str(eval(question[len("Compute "):-1])))
    assert {p.question for p in test}.isdisjoint(q for _, q in shots[::2])
    plain, _ = builtin_prompts(load_config(None, ["data.tasks=[arith]", "data.train_per_level=6"]).data)
    assert len(plain[0].messages) == 1
    with pytest.raises(UserError, match="data.few_shot"):
        load_config(None, ["data.few_shot=-1"])


def test_make_prompts_leaves_out_excluded_problems_and_draws_others_in_their_place():
    from k15rl.tasks import TooFewProblems, get_task, make_prompts, problem_key

    task = get_task("sort")
    plain = make_prompts(task, "train", 10, (1, 2), seed=0)
    banned = {problem_key(p) for p in plain[::2]}  # every other problem of each level
    kept = make_prompts(task, "train", 10, (1, 2), seed=0, exclude=banned)
    assert len(kept) == 20 and not banned & {problem_key(p) for p in kept}
    # the problems not excluded come in the same order, the new ones after them
    assert [p.question for p in kept[:5]] == [p.question for p in plain[1:10:2]]
    with pytest.raises(TooFewProblems, match=r"could not draw 3 distinct train problems \(got 2; 1 more were excluded\)") as e:
        make_prompts(FiniteTask(), "train", 3, (1,), seed=0, exclude={"q0"})
    assert e.value.excluded == 1
    with pytest.raises(TooFewProblems, match=r"could not draw 4 distinct train problems \(got 3\)$") as e:
        make_prompts(FiniteTask(), "train", 4, (1,), seed=0)
    assert e.value.excluded == 0


def test_make_prompts_gives_up_on_an_exhausted_level_without_drawing_50_times_a_huge_request():
    """Asking a level for far more problems than it has stops once no new one has come for
    50x the draws that found one (1,150 draws here), not after 50 x 10^8 draws."""
    import time

    from k15rl.tasks import TooFewProblems, make_prompts

    task = FiniteTask()
    t0 = time.perf_counter()
    with pytest.raises(TooFewProblems, match=r"could not draw 100000000 distinct train problems \(got 3\)"):
        make_prompts(task, "train", 10**8, (1,), seed=0)
    assert task.draws < 2000, task.draws
    assert time.perf_counter() - t0 < 10


class FiniteTask:
    """Three distinct problems in all (q0, q1, q2), each of the train split."""

    name, levels = "finite", (1,)

    def __init__(self):
        self.draws = 0

    def generate(self, rng, level):
        from k15rl.tasks import Problem

        self.draws += 1
        i = rng.randrange(3)
        return Problem(f"q{i}", str(i), level, meta={"split_key": f"q{i}"})


def test_rl_train_prompts_leave_out_the_builtin_models_warmup_prompts(monkeypatch):
    """data.exclude_warmup (report §2.2): with a built-in model, by name or by its cache
    folder, no RL train prompt is one the warm-up fitted; `none` keeps them; the held-out
    split is untouched; a bad value and a pool too small are one-line errors."""
    from k15rl.data import build_prompts
    from k15rl.models.builtin import BUILTIN_SPECS, builtin_dir, warmup_prompts
    from k15rl.tasks import problem_key

    warm = {problem_key(p) for p in warmup_prompts(BUILTIN_SPECS["builtin"])}
    assert len(warm) == sum(BUILTIN_SPECS["builtin"].sft_per_level)
    quiet = lambda s: None  # noqa: E731
    base = ["data.tasks=[sort]", "data.train_per_level=20", "data.test_per_level=5"]
    kept, _ = build_prompts(load_config(None, ["model.path=builtin", "data.exclude_warmup=none", *base]), quiet)
    assert {problem_key(p) for p in kept} <= warm  # the same seed draws the warm-up's problems first
    for model in ("builtin", str(builtin_dir(BUILTIN_SPECS["builtin"]))):
        train, test = build_prompts(load_config(None, [f"model.path={model}", *base]), quiet)
        assert len(train) == 120 and warm.isdisjoint(problem_key(p) for p in train)
        assert [p.id for p in test] == [p.id for p in build_prompts(
            load_config(None, ["model.path=builtin", "data.exclude_warmup=none", *base]), quiet)[1]]
    # a model made from a built-in one (a folder of its own) names it
    train, _ = build_prompts(load_config(None, ["model.path=/some/merged", "data.exclude_warmup=builtin", *base]), quiet)
    assert warm.isdisjoint(problem_key(p) for p in train)
    other, _ = build_prompts(load_config(None, ["model.path=/some/merged", *base]), quiet)  # auto: not built-in
    assert {problem_key(p) for p in other} <= warm
    with pytest.raises(UserError, match=r"data.exclude_warmup: 'nope' is not auto, none or a built-in model"):
        build_prompts(load_config(None, ["data.exclude_warmup=nope", *base]), quiet)
    with pytest.raises(UserError, match=r"level 1: could not draw 300 distinct train problems \(got \d+; 400 more were "
                                        r"excluded\): the excluded ones are the built-in model's warm-up prompts"):
        build_prompts(load_config(None, ["model.path=builtin-long", "data.tasks=[subset_sum]", "data.train_levels=[1]",
                                         "data.test_levels=[1]", "data.train_per_level=300"]), quiet)


def test_mbpp_rows_load_with_their_test_imports(tmp_path):
    """MBPP's layout: `test_list` (assert lines) is read as the test cases, with the row's
    `test_imports`; a row whose asserts need an import it does not give is refused at load."""
    from k15rl.verifiers.code import code_reward

    asserts = ["assert math.isqrt(square(3)) == 3", "assert square(-2) == 4"]
    f = write_jsonl(tmp_path / "mbpp.jsonl", [
        {"task_id": 1, "prompt": "Write square(x).", "code": "def square(x): return x * x",
         "test_imports": ["import math"], "test_list": asserts}])
    (p,), _ = load_file(f, data_cfg(), lambda s: None)
    assert p.meta["test_cases"] == {"test_list": asserts, "test_imports": ["import math"]}
    assert code_reward("```python\ndef square(x):\n    return x * x\n```", p) == 1.0
    assert code_reward("```python\ndef square(x):\n    return x + x\n```", p) == 0.0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Write square(x).", "test_list": asserts}])
    with pytest.raises(UserError, match=r"bad\.jsonl.*line 1.*test_list.*math"):
        load_file(bad, data_cfg(), lambda s: None)


def test_an_old_builtin_folder_is_warned_about_not_silently_kept(tmp_path):
    """A built-in model folder whose name no current spec makes (built by an older version,
    whose tasks drew other problems): its warm-up problems are unknown, so nothing is
    left out, and the run says so instead of keeping them silently."""
    from k15rl.data import build_prompts
    from k15rl.models.builtin import SPEC_FILE

    old = tmp_path / "builtin-000000000000"
    old.mkdir()
    (old / SPEC_FILE).write_text("{}")
    said = []
    base = ["data.tasks=[sort]", "data.train_per_level=5", "data.test_per_level=2"]
    build_prompts(load_config(None, [f"model.path={old}", *base]), said.append)
    assert [s for s in said if "would not build" in s and str(old) in s and "data.exclude_warmup" in s]
    said.clear()
    build_prompts(load_config(None, [f"model.path={tmp_path}", *base]), said.append)  # not a built-in folder
    assert not [s for s in said if "would not build" in s]


def test_evaluated_prompts_leave_room_for_the_evaluations_responses():
    """Test prompts are evaluated with eval.max_new_tokens where set: their limit leaves
    room for those, train prompts for rollout.max_new_tokens; an evaluation budget that
    leaves no room names its key."""
    from types import SimpleNamespace

    from k15rl.config import load_config
    from k15rl.data import prompt_token_limit
    from k15rl.errors import UserError

    model = SimpleNamespace(max_position_embeddings=1024)
    cfg = load_config(None, ["rollout.max_new_tokens=200", "eval.max_new_tokens=600"])
    assert prompt_token_limit(cfg, model) == 824 and prompt_token_limit(cfg, model, evaluation=True) == 424
    from k15rl.rollout.factory import context_length

    assert context_length(cfg, model, 824) == 1024  # the engine never holds more than the model's context
    capped = load_config(None, ["rollout.max_new_tokens=200", "eval.max_new_tokens=600", "data.max_prompt_tokens=300"])
    assert context_length(capped, model, prompt_token_limit(capped, model)) == 900
    same = load_config(None, ["rollout.max_new_tokens=200"])  # eval.max_new_tokens unset: the rollout's
    assert prompt_token_limit(same, model, evaluation=True) == 824
    with pytest.raises(UserError, match=r"^config key eval\.max_new_tokens: 1024 leaves no room"):
        prompt_token_limit(load_config(None, ["eval.max_new_tokens=1024"]), model, evaluation=True)
    with pytest.raises(UserError, match=r"^config key data\.max_prompt_tokens: 500 prompt tokens plus "
                                        r"eval\.max_new_tokens=600 exceed"):
        prompt_token_limit(load_config(None, ["data.max_prompt_tokens=500", "eval.max_new_tokens=600"]), model,
                           evaluation=True)
