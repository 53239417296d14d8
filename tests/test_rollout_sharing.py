"""The local built-in engine generates with the trainer's own parameters
(`placement.shares_weights`): no copy, no weight sync, and a run equal to one whose
engine holds a synced copy (the default before sharing, and still the case with
rollout.overlap, vLLM or Ray)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from k15rl.config import load_config
from k15rl.distributed import placement
from k15rl.distributed.placement import shares_weights, start_workers
from k15rl.models.loading import load_model, load_tokenizer
from k15rl.trainer.loop import train
from k15rl.trainer.update import update_plan

from test_e2e import toy_task  # noqa: F401 (the digit_first task, a fixture)

pytestmark = pytest.mark.usefixtures("toy_task")


def _cfg(out, model, *extra):
    return load_config(None, [
        f"out={out}", f"model.path={model}", "data.tasks=[digit_first]", "data.train_per_level=20",
        "data.test_per_level=4", "iterations=3", "rollout.k=8", "rollout.prompts_per_iteration=8",
        "rollout.max_new_tokens=6", "algorithm.lr=0.01", "algorithm.tau=0.01", "eval.every=3", "threads=1", *extra,
    ])


def test_which_placements_share():
    assert shares_weights(load_config(None, []))
    assert not shares_weights(load_config(None, ["rollout.overlap=true"]))  # samples pi_i while pi_i changes
    assert not shares_weights(load_config(None, ["rollout.engine=vllm"]))
    assert not shares_weights(load_config(None, ["distributed.backend=ray"]))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_engine_computes_with_the_trainers_parameters(tmp_path, tiny_model_dir, lora):
    cfg = _cfg(tmp_path, tiny_model_dir, *(["model.lora.rank=4"] if lora else []))
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    with start_workers(cfg, tiny_model_dir, model, tok, update_plan(cfg, tok.pad_token_id), 64) as workers:
        assert workers.shared
        served = {p.data_ptr() for p in workers.engine.model.parameters()}
        trained = {p.data_ptr() for p in workers.trainer.current_model().parameters()}
        assert served == trained  # the same tensors, adapters included: no copy


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_run_equals_a_run_with_a_synced_copy(tmp_path, tiny_model_dir, monkeypatch, lora):
    extra = ["model.lora.rank=4", "model.lora.alpha=8", "algorithm.lr=0.05"] if lora else []
    train(_cfg(tmp_path / "shared", tiny_model_dir, *extra), log=lambda s: None)
    monkeypatch.setattr(placement, "shares_weights", lambda cfg: False)
    train(_cfg(tmp_path / "copy", tiny_model_dir, *extra), log=lambda s: None)

    def rows(run):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/") and not k.endswith("per_s")}
                for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert any(r["reward/mean"] > 0 for r in rows("shared"))  # something was learned from
    a, b = load_file(tmp_path / "shared" / "final" / "model.safetensors"), \
        load_file(tmp_path / "copy" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    if lora:  # W x + s B A x against the merged (W + s B A) x: the same tokens, float rounding apart
        for key in ("reward/mean", "rollout/len_mean", "rollout/trained"):
            assert [r[key] for r in rows("shared")] == [r[key] for r in rows("copy")]
        assert max(r["rollout/logprob_gap_max"] for r in rows("shared")) < 1e-4
        # AdamW's first steps are about lr * sign(g), so rounding in gradients near 0 moves
        # single elements by a good part of a step; what the runs learned must agree closely
        base = load_file(tiny_model_dir / "model.safetensors")
        moved = sum((a[k] - base[k]).norm() ** 2 for k in a) ** 0.5
        apart = sum((a[k] - b[k]).norm() ** 2 for k in a) ** 0.5
        assert moved > 0 and apart < 0.05 * moved, (apart, moved)
    else:  # the same tensors either way: bitwise
        assert rows("shared") == rows("copy")
        assert all(torch.equal(a[k], b[k]) for k in a)
