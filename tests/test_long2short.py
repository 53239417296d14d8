"""Long2short (report §2.4): pair rules on hand-made samples, merge arithmetic, shortest
rejection sampling, DPO training, the token-efficiency report on two tiny models, and the command lines' bad input."""

import json
import math
import shutil

import pytest
import torch

from k15rl.cli import main
from k15rl.long2short.dpo import (
    DPOConfig,
    PairExample,
    cached_reference_logps,
    dpo_pair_rows,
    dpo_pairs,
    dpo_train,
    encode_pairs,
    load_pairs_jsonl,
)
from k15rl.long2short.merge import merge_models, merge_state_dicts
from k15rl.long2short.report import markdown_table, model_result
from k15rl.long2short.shortest import Sample, SampledGroup, sample_groups, shortest_correct, shortest_rs_rows
from k15rl.errors import UserError
from k15rl.types import Prompt, Segment, Trajectory


def S(n, ok, text=None):
    return Sample(text or f"{'ok' if ok else 'no'}{n}", n, ok)


# ---- pair construction (report §2.4) ----

def test_pairs_chosen_is_shortest_correct_and_rejects_longer_wrong_and_long_correct():
    s = [S(20, False), S(10, True), S(9, False), S(14, True), S(15, True), S(30, True), S(11, False)]
    pairs = dpo_pairs(s)
    assert {p.chosen for p in pairs} == {1}
    assert [(p.rejected, p.reason) for p in pairs] == [
        (0, "wrong_longer"),  # wrong and longer
        (4, "correct_too_long"),  # 15 = 1.5 x 10: on the boundary, rejected
        (5, "correct_too_long"),
        (6, "wrong_longer"),  # 11 > 10
    ]  # 9 (wrong but shorter) and 14 (correct, 1.4x) are not rejected


def test_pairs_1_5x_boundary_and_configurable_ratio():
    assert [p.rejected for p in dpo_pairs([S(10, True), S(14, True), S(15, True)])] == [2]
    assert [p.rejected for p in dpo_pairs([S(10, True), S(15, True), S(20, True)], ratio=2.0)] == [2]
    assert [p.rejected for p in dpo_pairs([S(10, True), S(11, True)], ratio=1.1)] == [1]
    with pytest.raises(ValueError):
        dpo_pairs([S(10, True)], ratio=0.5)


def test_pairs_ties_in_length():
    # two shortest correct of equal length: the first sampled is chosen, the other is
    # neither chosen again nor rejected; a wrong response of the same length is not longer
    s = [S(12, False), S(8, True, "a"), S(8, True, "b"), S(8, False), S(9, False)]
    pairs = dpo_pairs(s)
    assert [(p.chosen, p.rejected) for p in pairs] == [(1, 0), (1, 4)]
    assert shortest_correct(s) == 1


def test_pairs_no_correct_sample_and_all_correct():
    assert dpo_pairs([S(5, False), S(50, False)]) == []
    assert shortest_correct([S(5, False)]) is None
    all_correct = [S(10, True), S(12, True), S(16, True), S(10, True)]
    assert [(p.rejected, p.reason) for p in dpo_pairs(all_correct)] == [(2, "correct_too_long")]
    assert dpo_pairs([S(7, True)] * 3) == []  # all correct, all equally long: nothing to reject


def _prompt(i=0, level=1):
    return Prompt(id=f"p{i}", messages=(("user", f"q{i}"),), answer="a", task="sort", level=level)


def test_pair_rows_and_shortest_rows_count_questions():
    groups = [
        SampledGroup(_prompt(0), [S(10, True, "short"), S(20, False, "long wrong"), S(16, True, "long right")]),
        SampledGroup(_prompt(1), [S(5, False), S(6, False)]),  # no correct sample
        SampledGroup(_prompt(2), [S(7, True, "only"), S(3, False)]),  # correct, nothing to reject
    ]
    rows, st = dpo_pair_rows(groups)
    assert (st.questions, st.pairs, st.wrong_longer, st.correct_too_long, st.without_correct, st.without_pairs) == (
        3, 2, 1, 1, 1, 1)
    assert rows[0]["prompt"] == "q0" and rows[0]["chosen"] == "short"
    assert [r["rejected"] for r in rows] == ["long wrong", "long right"]
    sft, st2 = shortest_rs_rows(groups)
    assert [r["response"] for r in sft] == ["short", "only"]
    assert (st2.questions, st2.kept, st2.without_correct) == (3, 2, 1)
    assert st2.mean_tokens_kept == pytest.approx((10 + 7) / 2)
    assert st2.mean_tokens_all == pytest.approx((10 + 20 + 16 + 5 + 6 + 7 + 3) / 7)


def test_samples_a_row_cannot_hold_are_left_out_and_counted(tmp_path):
    """A sampled U+0000 (a byte token) in the shortest correct or a rejected response: the
    rows leave that sample out (the next shortest is chosen) and count it, and the files
    they make load back."""
    from k15rl.data import write_jsonl
    from k15rl.trainer.sft import load_sft_jsonl

    groups = [SampledGroup(_prompt(0), [S(4, True, "ab\x00"), S(9, True, "short"), S(30, False, "long\x00 wrong"),
                                        S(20, False, "long wrong")])]
    rows, st = dpo_pair_rows(groups)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("short", "long wrong")] and st.unwritable == 2
    assert "2 samples left out" in st.line()
    sft, st2 = shortest_rs_rows(groups)
    assert [r["response"] for r in sft] == ["short"] and st2.unwritable == 2
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    write_jsonl(tmp_path / "sft.jsonl", sft)
    assert [p.chosen for p in load_pairs_jsonl(tmp_path / "pairs.jsonl")] == ["short"]
    assert len(load_sft_jsonl(tmp_path / "sft.jsonl")) == 1


# ---- merging ----

def _perturbed_copy(src, dst, scale=0.1, seed=1):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return sd


def test_merged_tensors_equal_the_weighted_average(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    a = load_file(str(tiny_model_dir / "model.safetensors"))
    b = _perturbed_copy(tiny_model_dir, tmp_path / "short")
    for w in (0.5, 0.25):
        out = merge_models(tiny_model_dir, tmp_path / "short", tmp_path / f"m{w}", weight=w)
        merged = load_file(str(out / "model.safetensors"))
        assert merged.keys() == a.keys()
        for k in a:
            assert torch.allclose(merged[k], w * a[k] + (1 - w) * b[k], atol=1e-7), k
        assert (out / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
        assert json.loads((out / "merge.json").read_text())["weight_long"] == w
    # the merged folder is an ordinary model that loads and computes
    from k15rl.models.loading import load_model, load_tokenizer

    tok, model = load_tokenizer(tmp_path / "m0.5"), load_model(tmp_path / "m0.5")
    assert model(input_ids=torch.tensor([tok("answer: a")["input_ids"]])).logits.isfinite().all()
    with pytest.raises(UserError, match="already holds a model"):
        merge_models(tiny_model_dir, tmp_path / "short", tmp_path / "m0.5")


def test_merge_names_the_first_mismatch(tmp_path, tiny_model_dir):
    a = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"'b.weight' has shape \[4\] in the long model and \[5\]"):
        merge_state_dicts(a, {"a.weight": torch.ones(2, 3), "b.weight": torch.ones(5)})
    with pytest.raises(ValueError, match="'b.weight' is in the long model but not in the short"):
        merge_state_dicts(a, {"a.weight": torch.ones(2, 3)})
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "qwen2", ["Qwen2ForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="different architectures: config.json model_type"):
        merge_models(tiny_model_dir, other, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_cli_shape_mismatch_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    sd = load_file(str(other / "model.safetensors"))
    name = sorted(sd)[3]
    sd[name] = torch.zeros(*[d + 1 for d in sd[name].shape])
    save_file(sd, str(other / "model.safetensors"))
    assert main(["long2short", "merge", "--long", str(tiny_model_dir), "--short", str(other),
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"tensor {name!r} has shape" in err
    assert not (tmp_path / "m").exists()


# ---- sampling, shortest rejection sampling ----

class ScriptedEngine:
    """Answers request j of each prompt with responses[j % len(responses)] (text of the
    prompt's sorted answer or not): a deterministic stand-in for a model."""

    def __init__(self, tok, responses):
        self.tok, self.responses = tok, responses

    def generate(self, requests, params):
        out = []
        for r in requests:
            j = int(r.id.split("m")[-1])
            text = self.responses[j % len(self.responses)]
            ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            out.append(Segment(ids, [0.0] * len(ids), "stop"))
        return out

    def load_weights(self, sd):
        pass


def test_sample_groups_scores_with_the_task_verifier_and_keeps_the_shortest(tiny_model_dir):
    from k15rl.models.loading import load_tokenizer
    from k15rl.rollout.engine import SamplingParams

    tok = load_tokenizer(tiny_model_dir)
    p = Prompt("p0", (("user", "Sort these letters: c a b."),), "a b c", "sort", 1)
    long_right = "plan: 3 letters, pick the first in order each time, then check.\n1: a\n2: b\n3: c\nanswer: a b c"
    responses = [long_right, "answer: a b c", "answer: c b a", "answer: a b c"]
    groups = sample_groups(ScriptedEngine(tok, responses), tok, [p, p], 4, SamplingParams(), prompts_per_call=1)
    assert [s.correct for s in groups[0].samples] == [True, True, False, True]
    assert groups[0].samples[1].num_tokens == len(tok("answer: a b c")["input_ids"]) + 1  # EOS counted
    rows, st = shortest_rs_rows(groups)
    assert [r["response"] for r in rows] == ["answer: a b c"] * 2 and st.kept == 2
    pairs, _ = dpo_pair_rows(groups)
    # the wrong answer is as long as the chosen one, so only the long correct one is rejected
    assert [(r["chosen"], r["rejected"], r["reason"]) for r in pairs] == [
        ("answer: a b c", long_right, "correct_too_long")] * 2


# ---- DPO training ----

def _pairs(n=8):
    out = []
    for c in "bcdefghi"[:n]:
        q = [{"role": "user", "content": f"Sort these letters: {c} a."}]
        out.append(PairExample(q, f"answer: a {c}", f"plan: 2 letters, then check.\n1: a\n2: {c}\nanswer: a {c}"))
    return out


def test_dpo_pairs_that_do_not_fit_are_left_out_whole(tiny_model_dir):
    """A pair over max_length with its longer response is left out, and said so, not cut
    to the same room (which would drop both responses' ends and their difference in
    length); the pairs that fit keep every token, EOS included."""
    from k15rl.models.loading import encode_prompt, encode_response, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    pairs = _pairs(3)
    pairs[2] = PairExample(pairs[2].messages, pairs[2].chosen, pairs[2].rejected + "\ncheck again: a d. answer: a d")
    sizes = [len(encode_prompt(tok, [(m["role"], m["content"]) for m in p.messages])) + len(encode_response(tok, p.rejected))
             for p in pairs]
    said = []
    rows = encode_pairs(tok, pairs, sizes[0], log=said.append)  # each pair's longer response: the rejected one
    assert len(rows) == sum(s <= sizes[0] for s in sizes) >= 1
    assert all(r.chosen == encode_response(tok, p.chosen) and r.rejected == encode_response(tok, p.rejected)
               for r, p in zip(rows, pairs))
    assert rows[0].rejected[-1] == encode_response(tok, pairs[0].rejected)[-1]  # its end (EOS) kept
    assert len(rows) == 2 and said == [f"dpo: 1 of 3 pairs left out: over {sizes[0]} tokens with their longer "
                                       f"response (the longest {sizes[2]}; --max-length)"]
    assert encode_pairs(tok, pairs, min(sizes) - 1, log=said.append) == []


def test_dpo_in_bf16_starts_at_log_2(tmp_path, tiny_model_dir):
    """With --bf16 the reference log-probs are computed under the same autocast as the
    policy's, so the first step's loss is log 2 (the policy is the reference); an fp32
    cache is not taken for them."""
    from k15rl.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    rows = encode_pairs(tok, _pairs(), 512)
    cache = tmp_path / "ref.pt"
    fp32 = cached_reference_logps(load_model(tiny_model_dir), rows, tok.pad_token_id, cache, key="k")
    model = load_model(tiny_model_dir)
    said = []
    ref = cached_reference_logps(model, rows, tok.pad_token_id, cache, key="k", bf16=True, log=said.append)
    assert not said and not torch.equal(ref, fp32)  # computed again, not read from the fp32 cache
    hist = dpo_train(model, tok, rows, ref, DPOConfig(beta=0.5, lr=3e-3, epochs=1, batch_size=4, autocast_bf16=True))
    assert hist[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_dpo_training_prefers_chosen_and_caches_reference(tmp_path, tiny_model_dir, monkeypatch):
    import k15rl.long2short.dpo as dpo
    from k15rl.models.loading import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    rows = encode_pairs(tok, _pairs(), 512)
    cache = tmp_path / "ref.pt"
    ref = cached_reference_logps(model, rows, tok.pad_token_id, cache, key="k1")
    assert ref.shape == (8, 2) and cache.is_file()
    hist = dpo_train(model, tok, rows, ref, DPOConfig(beta=0.5, lr=3e-3, epochs=6, batch_size=4, warmup_frac=0.0))
    assert hist[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference
    assert hist[-1]["dpo/loss"] < 0.5 * hist[0]["dpo/loss"] and hist[-1]["dpo/margin"] > 0
    # the second time the reference log-probs come from the cache, not from a model
    monkeypatch.setattr(dpo, "reference_logps", lambda *a, **k: pytest.fail("recomputed"))
    assert torch.equal(cached_reference_logps(None, rows, tok.pad_token_id, cache, key="k1"), ref)
    monkeypatch.undo()
    assert not torch.equal(cached_reference_logps(model, rows, tok.pad_token_id, cache, key="k2"), ref)


def test_pairs_jsonl_errors_name_file_line_field(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(UserError, match=r"p.jsonl:2: missing field 'rejected'"):
        load_pairs_jsonl(f)
    f.write_text('{"prompt": "q", "chosen": 3, "rejected": "b"}\n')
    with pytest.raises(UserError, match=r"p.jsonl:1: field 'chosen' must be a string"):
        load_pairs_jsonl(f)
    f.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"\n')
    with pytest.raises(UserError, match=r"p.jsonl:1: not valid JSON"):
        load_pairs_jsonl(f)


def test_dpo_cli(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": p.messages, "chosen": p.chosen, "rejected": p.rejected})
                           for p in _pairs(4)))
    args = ["dpo", "--model", str(tiny_model_dir), "--data", str(f), "--out", str(tmp_path / "out"),
            "--batch-size", "2", "--lr", "1e-3"]
    assert main(args) == 0
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "pairs.jsonl.ref_logps.pt").is_file()
    assert main(args) == 2 and "already holds a model" in capsys.readouterr().err
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(f), "--out", str(tmp_path / "o2"),
                 "--beta", "0"]) == 2
    assert "--beta must be > 0 (got 0.0)" in capsys.readouterr().err


# ---- the report ----

def _traj(n, ok, level=1, group=0):
    return Trajectory(_prompt(level=level), group, [1], [5] * n, [0.0] * n, "stop", correct=ok)


def test_model_result_intervals_hand_computed():
    r = model_result("m", "p", [_traj(2, True, group=0), _traj(4, False, group=1), _traj(6, True, level=2, group=2)])
    assert r.accuracy == pytest.approx(2 / 3) and r.mean_tokens == 4.0
    assert r.mean_tokens_ci95 == pytest.approx(1.96 * 2 / math.sqrt(3))  # sample sd of 2, 4, 6 is 2
    assert r.accuracy_ci95 == pytest.approx(1.96 * math.sqrt(2 / 9 / 3))
    assert r.per_level["1"]["mean_tokens"] == 3.0
    table = markdown_table([r, model_result("half", "q", [_traj(2, True)])])
    assert "| half | 100.0 +/- 0.0 | +33.3 | 2.0 +/- 0.0 | -50.0% | 500.0 |" in table
    # two samples of each of 2 prompts: the prompt is the unit (means 3 and 7 tokens, 1 and 0.5
    # right), not the 4 samples, whose interval would be narrower
    r = model_result("m", "p", [_traj(2, True, group=0), _traj(4, True, group=0), _traj(6, True, group=1),
                                _traj(8, False, group=1)])
    assert r.mean_tokens == 5.0 and r.mean_tokens_ci95 == pytest.approx(1.96 * math.sqrt(8 / 2))
    assert r.accuracy_ci95 == pytest.approx(1.96 * math.sqrt(0.125 / 2))
    # one prompt: no spread of prompts to take, so the samples' own (binomial) interval
    one = model_result("m", "p", [_traj(2, ok, group=0) for ok in (True, True, False, False)])
    assert one.accuracy_ci95 == pytest.approx(1.96 * math.sqrt(0.25 / 4))
    with pytest.raises(UserError, match="no prompt to evaluate m"):
        model_result("m", "p", [])


def test_report_on_two_tiny_models(tmp_path, tiny_model_dir, capsys):
    _perturbed_copy(tiny_model_dir, tmp_path / "other", scale=0.5)
    out = tmp_path / "report"
    assert main(["long2short", "report", "--models", str(tiny_model_dir), str(tmp_path / "other"),
                 "--labels", "long", "short", "--limit", "6", "--out", str(out),
                 "rollout.max_new_tokens=12", "data.test_per_level=1"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [m["label"] for m in data["models"]] == ["long", "short"]
    for m in data["models"]:
        assert m["n"] == 6 and 0 <= m["accuracy"] <= 1 and 1 <= m["mean_tokens"] <= 12
    assert data["settings"]["max_new_tokens"] == 12
    md = (out / "report.md").read_text()
    assert "| long |" in md and "| short |" in md and "| +0.0 |" in md.splitlines()[4]
    assert (out / "token_efficiency.png").stat().st_size > 1000
    assert main(["long2short", "report", "--models", str(tiny_model_dir), "--labels", "a", "b"]) == 2
    assert "--labels: 2 labels for 1 models" in capsys.readouterr().err


def test_shortest_rs_cli_without_correct_samples_writes_nothing(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "s.jsonl"
    code = main(["long2short", "shortest-rs", "--model", str(tiny_model_dir), "--n", "2", "--limit", "3",
                 "--max-new-tokens", "4", "--out", str(out), "data.train_per_level=1"])
    assert code == 2 and "no question has a correct sample" in capsys.readouterr().err and not out.exists()
    assert main(["long2short", "dpo-pairs", "--model", str(tiny_model_dir), "--n", "0", "--out", str(out)]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err


def test_dpo_sft_weight_adds_the_chosen_per_token_nll(tiny_model_dir):
    from k15rl.models.loading import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    rows = encode_pairs(tok, _pairs(4), 512)
    ref = cached_reference_logps(model, rows, tok.pad_token_id, None, key="")
    hist = dpo_train(model, tok, rows, ref, DPOConfig(lr=1e-3, batch_size=4, sft_weight=2.0))
    # one batch holding every pair: at the first step the policy is the reference
    per_token = -(ref[:, 0] / torch.tensor([float(len(r.chosen)) for r in rows])).mean()
    assert hist[0]["dpo/nll_chosen"] == pytest.approx(per_token.item(), rel=1e-5)
    assert hist[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)
