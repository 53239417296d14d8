"""Typed config: presets, overrides, type coercion, loss hyper-parameter routing."""

import pytest

from k15rl.algorithms import grpo_loss, k15_loss, rest_loss
from k15rl.config import AlgorithmConfig, list_presets, load_config, loss_kwargs
from k15rl.errors import UserError


def test_presets_load_and_validate():
    assert "demo" in list_presets()
    for name in list_presets():
        load_config(name)


def test_overrides_are_typed():
    cfg = load_config("demo", ["rollout.k=4", "algorithm.lr=1e-4", "algorithm.tau=1", "data.tasks=[arith, sort]",
                               "model.chat_template=plain", "eval.max_new_tokens=null"])
    assert cfg.rollout.k == 4 and cfg.algorithm.lr == 1e-4 and isinstance(cfg.algorithm.tau, float)
    assert cfg.data.tasks == ["arith", "sort"] and cfg.model.chat_template == "plain"
    assert cfg.eval.max_new_tokens is None


@pytest.mark.parametrize("bad", ["rollout.k=1.5", "rollout.k=true", "algorithm.lr=fast", "data.tasks=sort",
                                 "rollout.nope=1", "nope.k=1", "rollout=3"])
def test_bad_overrides(bad):
    with pytest.raises(UserError):
        load_config(None, [bad])


def test_loss_kwargs_route_by_signature():
    a = AlgorithmConfig(tau=0.3, clip_eps=0.1, normalization="token")
    assert loss_kwargs(k15_loss, a) == {"tau": 0.3, "normalization": "token"}
    assert loss_kwargs(grpo_loss, a) == {"clip_eps": 0.1}
    assert loss_kwargs(rest_loss, a) == {}


@pytest.mark.parametrize("overrides, key", [
    (["distributed.backend=slurm"], "distributed.backend"),
    (["distributed.trainer_workers=2"], "distributed.trainer_workers"),  # sharding needs the Ray backend
    (["distributed.backend=ray", "distributed.colocate=true", "distributed.rollout_workers=3"], "distributed.colocate"),
    (["distributed.colocate=true", "rollout.overlap=true"], "distributed.colocate"),
    (["distributed.device=tpu"], "distributed.device"),
    (["rollout.engine=sglang"], "rollout.engine"),
    (["rollout.vllm.gpu_memory_utilization=1.5"], "rollout.vllm.gpu_memory_utilization"),
])
def test_bad_distributed_settings_name_the_key(overrides, key):
    with pytest.raises(UserError, match=f"config key {key}:"):
        load_config(None, overrides)


def test_ray_backend_without_ray_is_one_line(monkeypatch):
    import builtins

    from k15rl.distributed import ray_backend

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r"pip install 'k15rl\[ray\]'"):
        ray_backend.start_ray(load_config(None, ["distributed.backend=ray"]))
