"""Typed config: presets, overrides, type coercion, loss hyper-parameter routing."""

import dataclasses

import pytest

from k15rl.algorithms import grpo_loss, k15_loss, rest_loss
from k15rl.config import list_presets, load_config
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


def test_make_loss_binds_each_losses_own_config_fields():
    """Each loss gets its hyper-parameters from explicit config fields, settable from a config."""
    from k15rl.algorithms import make_loss

    cfg = load_config(None, ["algorithm.tau=0.3", "algorithm.normalization=token", "algorithm.clip_eps=0.1",
                             "algorithm.std_eps=0.01", "algorithm.rest_threshold=0.7"])
    a = cfg.algorithm
    k15 = make_loss(a)
    assert k15.func is k15_loss and k15.keywords == {"tau": 0.3, "normalization": "token"}
    grpo = make_loss(dataclasses.replace(a, loss="grpo"))
    assert grpo.func is grpo_loss and grpo.keywords == {"clip_eps": 0.1, "eps": 0.01}
    rest = make_loss(dataclasses.replace(a, loss="rest"))
    assert rest.func is rest_loss and rest.keywords == {"threshold": 0.7}


def test_string_choices_are_the_registries():
    """The Literal types of the config are exactly the names the registries know."""
    import typing

    from k15rl.algorithms import LOSSES
    from k15rl.config import AlgorithmConfig, SamplerConfig
    from k15rl.sampling import SAMPLERS

    hints = typing.get_type_hints(AlgorithmConfig)
    assert set(typing.get_args(hints["loss"])) == set(LOSSES)
    assert set(typing.get_args(typing.get_type_hints(SamplerConfig)["name"])) == set(SAMPLERS)


@pytest.mark.parametrize("bad, message", [
    ("algorithm.loss=ppo", "config key algorithm.loss: must be one of 'k15', 'grpo', 'rest' (got 'ppo')"),
    ("algorithm.normalization=1", "config key algorithm.normalization: must be one of 'sequence', 'token' (got '1')"),
    ("model.dtype=float16", "config key model.dtype: must be one of 'float32', 'bfloat16' (got 'float16')"),
])
def test_string_choices_are_checked_once_with_the_key(bad, message):
    with pytest.raises(UserError) as e:
        load_config(None, [bad])
    assert str(e.value) == message


@pytest.mark.parametrize("overrides, key", [
    (["distributed.backend=slurm"], "distributed.backend"),
    (["distributed.trainer_workers=2"], "distributed.trainer_workers"),  # sharding needs the Ray backend
    (["distributed.backend=ray", "distributed.colocate=true", "distributed.rollout_workers=3"], "distributed.colocate"),
    (["distributed.colocate=true", "rollout.overlap=true"], "distributed.colocate"),
    (["distributed.device=tpu"], "distributed.device"),
    (["rollout.engine=sglang"], "rollout.engine"),
    (["rollout.vllm.gpu_memory_utilization=1.5"], "rollout.vllm.gpu_memory_utilization"),
    (["rollout.iteration_tokens=-1"], "rollout.iteration_tokens"),
    (["rollout.iteration_tokens=64", "rollout.continue_first=false"], "rollout.iteration_tokens"),
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
