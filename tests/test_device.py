"""The offline stages (sft, dpo, eval, difficulty, curate, long2short sampling and report)
take their device from one setting, as training does: distributed.device (sft and dpo:
--device, the same choices), resolved by `k15rl.models.loading.on_device`; autocast and
every tensor then follow the model's parameters. Checked on CPU: a CUDA request on a
machine without one is a one-line error, and the request reaches `on_device`."""

import json

import pytest
import torch

from k15rl import cli
from k15rl.errors import UserError
from k15rl.models import loading
from k15rl.models.loading import load_model, load_tokenizer, model_device, on_device
from k15rl.trainer import finetune
from k15rl.trainer.sft import SFTConfig, sft_train


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_on_device_cpu_and_errors(tiny_model_dir, no_cuda):
    model = load_model(tiny_model_dir)
    assert on_device(model, "cpu") is model and model_device(model).type == "cpu"
    with pytest.raises(UserError) as e:
        on_device(model, "cuda")
    assert str(e.value) == ("distributed.device=cuda: no CUDA device is available here "
                            "(torch.cuda.is_available() is False)")
    with pytest.raises(UserError, match=r"^--device: unknown device 'tpu0' \(cpu or cuda\)$"):
        on_device(model, "tpu0", "--device")
    with pytest.raises(UserError, match=r"unsupported device 'meta'"):
        on_device(model, "meta")


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "response": f"answer: {i + 1}", "answer": str(i + 1)}) + "\n"
                            for i in range(4)))
    return path


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "{model}", "--output", "{tmp}/e.json", "distributed.device=cuda", "data.test_per_level=1"],
    ["difficulty", "--model", "{model}", "--data", "{data}", "--out", "{tmp}/d.jsonl", "distributed.device=cuda"],
    ["sft", "--model", "{model}", "--data", "{data}", "--out", "{tmp}/sft", "--device", "cuda"],
])
def test_a_cuda_request_without_cuda_is_one_line(tiny_model_dir, sft_file, tmp_path, capsys, no_cuda, argv):
    argv = [a.format(model=tiny_model_dir, data=sft_file, tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
    assert err.startswith("k15rl: error: ") and "no CUDA device is available here" in err
    assert ("--device=cuda" if "sft" in argv else "distributed.device=cuda") in err


def test_the_configured_device_reaches_the_model(tiny_model_dir, monkeypatch):
    """difficulty, curate and long2short sampling load their engine through `_load_engine`:
    it hands distributed.device to `on_device`; sft/dpo hand --device."""
    asked = []
    monkeypatch.setattr(loading, "on_device", lambda model, device, key="distributed.device": asked.append(
        (device, key)) or model)
    from k15rl.config import load_config

    cfg = load_config(None, ["distributed.device=cuda"])
    cli._load_engine(str(tiny_model_dir), cfg)
    args = cli.build_parser().parse_args(["dpo", "--model", str(tiny_model_dir), "--data", "x", "--out",
                                          str(tiny_model_dir.parent / "dpo_out"), "--device", "cuda"])
    cli._finetune_start(args)
    assert asked == [("cuda", "distributed.device"), ("cuda", "--device")]


def test_autocast_follows_the_model(tiny_model_dir, sft_file, monkeypatch):
    """SFT's bf16 autocast is for the model's device (here the CPU), and its batches go there."""
    seen = []
    real = torch.autocast
    monkeypatch.setattr(finetune.torch, "autocast", lambda device_type, **kw: kw.get("enabled", True) and seen.append(
        device_type) or real(device_type, **kw))  # the enabling ones (the fused LM head turns it off inside)
    model = load_model(tiny_model_dir)
    examples = [([{"role": "user", "content": "1 + 1?"}], "answer: 2")] * 4
    sft_train(model, load_tokenizer(tiny_model_dir), examples, SFTConfig(batch_size=2, autocast_bf16=True))
    assert seen == ["cpu", "cpu"]
    assert finetune.autocast(False, "cuda").__class__.__name__ == "nullcontext"
