"""Ray rollout workers with vLLM engines (needs vllm and ray: `make test-vllm`).

Each rollout worker is its own process with one vLLM engine (vLLM allows one per
process); they pull chunks of `distributed.chunk_size` requests from the master's queue.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

from k15rl.config import load_config  # noqa: E402
from k15rl.trainer.loop import train  # noqa: E402


def test_loop_on_ray_with_vllm_rollout_workers(tmp_path):
    out = tmp_path / "run"
    summary = train(load_config(None, [
        f"out={out}", "model.path=builtin", "iterations=3", "rollout.k=4", "rollout.prompts_per_iteration=8",
        "rollout.max_new_tokens=160", "rollout.segment_tokens=64", "data.test_per_level=2", "eval.every=0",
        "threads=1", "rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0.25", "distributed.backend=ray",
        "distributed.rollout_workers=2", "distributed.chunk_size=4", "distributed.num_cpus=4",
        "distributed.object_store_mb=256", "checkpoint_every=1",
    ]), log=lambda s: None)
    ray.shutdown()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert all(m["rollout/worker_requests_min"] > 0 for m in metrics)  # both workers pulled work
    assert metrics[0]["rollout/num_cut"] > 0 and metrics[1]["rollout/continued"] > 0  # partial rollouts
    assert summary["iterations"] == 3 and (out / "final" / "model.safetensors").exists()


def test_vlm_on_ray_with_vllm_workers_and_an_iteration_budget(tmp_path):
    """A vision-language model on Ray rollout workers with vLLM engines (images travel with
    the requests to the worker processes) and rollout.iteration_tokens split between them (2
    sequences at a time each, so that the budget leaves requests unstarted): the engines'
    log-probs equal the trainer's for the same tokens and images."""
    from conftest import build_small_vlm

    vlm = build_small_vlm(tmp_path / "cache", sft_per_level=[8] * 5, sft_epochs=2, hidden_size=64,
                          intermediate_size=128, num_layers=1, num_heads=2)
    out = tmp_path / "run"
    train(load_config(None, [
        f"out={out}", f"model.path={vlm}", "data.tasks=[vis_count,vis_bars]", "data.train_per_level=6",
        "data.train_levels=[1,2]", "data.test_levels=[1]", "data.test_per_level=2", "iterations=4", "rollout.k=3",
        "rollout.prompts_per_iteration=4", "rollout.max_new_tokens=24", "rollout.iteration_tokens=120",
        "rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0.25", "rollout.vllm.max_model_len=512",
        "rollout.vllm.max_num_seqs=2", "eval.every=0",
        "threads=1", "distributed.backend=ray", "distributed.rollout_workers=2", "distributed.chunk_size=4",
        "distributed.num_cpus=4", "distributed.object_store_mb=256",
    ]), log=lambda s: None)
    ray.shutdown()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["rollout/worker_requests_min"] > 0 for m in metrics)  # both workers pulled work
    print("per iteration (not started, log-prob gap):",
          [(m["rollout/not_started"], m.get("rollout/logprob_gap_max")) for m in metrics])
    assert any(m["rollout/not_started"] > 0 for m in metrics)  # the budget left requests unstarted
    gaps = [m["rollout/logprob_gap_max"] for m in metrics if "rollout/logprob_gap_max" in m]
    assert gaps and max(gaps) < 1e-4
