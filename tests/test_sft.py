"""SFT: loss on response tokens only; JSONL input errors name file, line and field."""

import json

import pytest
import torch

from k15rl.errors import UserError
from k15rl.models.loading import encode_prompt, encode_response, load_model, load_tokenizer
from k15rl.trainer.sft import SFTConfig, load_sft_jsonl, sft_train


def test_first_step_loss_is_hf_loss_with_prompt_masked(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    messages = [{"role": "user", "content": "Sort these letters: c a b."}]
    response = "plan: 3 letters\nanswer: a b c"
    p = encode_prompt(tok, [("user", messages[0]["content"])])
    r = encode_response(tok, response)
    ids = torch.tensor([p + r])
    labels = ids.clone()
    labels[0, : len(p)] = -100  # HF's own loss, prompt tokens ignored
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss.item()
    losses = sft_train(model, tok, [(messages, response)], SFTConfig(epochs=1, lr=1e-3, batch_size=1))
    assert losses[0] == pytest.approx(ref, rel=1e-5)


def test_a_response_longer_than_max_length_is_cut_and_said_so(tiny_model_dir):
    """The cut example's first step loss is HF's loss on the tokens that fit (no end of
    sequence); one line says how many were cut. A prompt of max_length tokens is refused."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    messages = [{"role": "user", "content": "Sort these letters: c a b."}]
    p = encode_prompt(tok, [("user", messages[0]["content"])])
    r = encode_response(tok, "plan: 3 letters\nanswer: a b c")
    ids = torch.tensor([p + r[:4]])
    labels = ids.clone()
    labels[0, : len(p)] = -100
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss.item()
    lines = []
    losses = sft_train(model, tok, [(messages, "plan: 3 letters\nanswer: a b c")],
                       SFTConfig(epochs=1, lr=1e-3, batch_size=1, max_length=len(p) + 4), log=lines.append)
    assert losses[0] == pytest.approx(ref, rel=1e-5)
    assert len(lines) == 1 and lines[0].startswith("sft: 1 of 1 examples are longer than max_length")
    with pytest.raises(UserError, match=f"example 1: its prompt is {len(p)} tokens"):
        sft_train(model, tok, [(messages, "answer: a b c")], SFTConfig(max_length=len(p)))


def test_sft_lowers_the_loss(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    ex = [([{"role": "user", "content": f"Sort these letters: {c} a."}], f"answer: a {c}") for c in "bcdefg"]
    losses = sft_train(model, tok, ex * 8, SFTConfig(epochs=6, lr=1e-2, batch_size=8))
    assert losses[-1] < 0.5 * losses[0]


def test_jsonl_errors_name_file_line_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON"):
        load_sft_jsonl(f)
    f.write_text('{"prompt": "q", "response": "a"}\n\n{"prompt": "q"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:3: missing field 'response'"):
        load_sft_jsonl(f)
    f.write_text('{"prompt": 3, "response": "a"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: field 'prompt'"):
        load_sft_jsonl(f)
    f.write_text("\n")
    with pytest.raises(UserError, match="no examples"):
        load_sft_jsonl(f)
    with pytest.raises(UserError, match="does not exist"):
        load_sft_jsonl(tmp_path / "missing.jsonl")


def test_jsonl_accepts_chat_messages(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "response": "a"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    [(messages, response)] = load_sft_jsonl(f)
    assert messages[1]["content"] == "q" and response == "a"
