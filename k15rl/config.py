"""Typed configuration: one dataclass per component, composed into `TrainConfig`.

Read from a YAML preset and `key=value` command-line overrides (dotted keys, values in
YAML syntax). Unknown keys, wrong types and out-of-range values raise `UserError` naming
the key; the command line turns that into a one-line message and exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from k15rl.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class LoraConfig:
    """LoRA adapters trained through peft instead of all weights (pip install 'k15rl[lora]';
    k15rl/models/lora.py; docs/hf_models.md "LoRA"). The engines sample from the merged
    weights W + (alpha / rank) B A, synced every iteration like full weights."""

    rank: int = 0  # r of every adapter; 0 = off (full fine-tune)
    alpha: float = 16.0  # scale alpha / rank of the update B A
    dropout: float = 0.0  # on the adapters' input while training (0 keeps log-probs deterministic)
    # Linear layers that get adapters (module names, matched at the end of their path): the
    # attention and MLP projections of Llama-style models, the built-in model included.
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    path: str = "builtin"  # "builtin" (the project's tiny model), "builtin-long" (a larger one for subset_sum) or a local Hugging Face folder
    dtype: Literal["float32", "bfloat16"] = "float32"  # master weights (float16 is unusably slow on CPUs); bfloat16 autocast is algorithm.autocast_bf16
    chat_template: str | None = None  # None: the tokenizer's; "plain"; or a Jinja string
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ColumnsConfig:
    """Field names in data files (dotted for nested: reward_model.ground_truth). None: the
    first of the usual names the file has (k15rl/data/rows.py CANDIDATES; docs/data.md)."""

    prompt: str | None = None  # prompt | problem | question | messages: text or a chat list
    answer: str | None = None  # answer | ground_truth | reward_model.ground_truth | final_answer | solution | target
    difficulty: str | None = None  # difficulty | level: a number, "Level N" or easy/medium/hard
    domain: str | None = None  # domain | data_source | subject | type | category
    test_cases: str | None = None  # test_cases | tests | input_output
    pass_rate: str | None = None  # pass_rate (written by `k15rl difficulty`)
    id: str | None = None  # id | uid | problem_id
    verifier: str | None = None  # verifier: a row's own verifier name (else data.verifier)
    images: str | None = None  # images | image: paths (relative to the file), bytes or a datasets Image feature


@dataclass
class DataConfig:
    # Built-in procedural tasks. None: [sort] when no files are given, none when files are.
    tasks: list[str] | None = None
    train_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    test_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    train_per_level: int = 2000
    test_per_level: int = 50
    seed: int = 0
    system_prompt: str | None = None  # prepended to every prompt that has no system message
    few_shot: int = 0  # built-in tasks: this many worked examples (train split, lowest train level) as chat turns before each prompt
    # Built-in tasks' RL train prompts leave out the prompts a built-in model's warm-up fitted
    # (report §2.2; RL on them would train on memorised answers): "auto" = model.path's when it
    # is a built-in model (its name or cache folder); a built-in model's name (for a model made
    # from one, e.g. merged); "none" = keep them
    exclude_warmup: str = "auto"
    # Prompt-set files (JSONL, JSON, CSV/TSV, Parquet, datasets folders); mixable with tasks.
    train_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    test_fraction: float = 0.0  # without test_files: share of file prompts held out (by a hash of the prompt)
    verifier: str = "math"  # verifier of file rows without their own (a rewards.VERIFIERS key or a task name)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    on_bad_row: Literal["error", "skip"] = "error"  # error: stop at the first bad row | skip: skip, count and report bad rows
    max_prompt_tokens: int = 0  # 0: the model's context minus rollout.max_new_tokens


@dataclass
class SamplerConfig:
    name: Literal["uniform", "prioritized", "curriculum"] = "uniform"  # report §2.3.4
    prior: float = 0.5  # prioritized: success rate assumed for an unseen prompt
    prior_weight: float = 1.0  # prioritized: how many rollouts the prior counts as
    min_weight: float = 0.05  # prioritized: floor of 1 - s_p, so solved prompts still come back
    schedule: Literal["warmup_then_hard", "gradual"] = "warmup_then_hard"  # curriculum
    warmup_iterations: int = 10  # curriculum: uniform (or rising) phase length
    # curriculum: level (Prompt.level) | label (data difficulty) | pass_rate (estimated)
    difficulty: Literal["level", "label", "pass_rate"] = "level"
    hard_min_level: int = 4  # curriculum, level or label: lowest difficulty after the warm-up (warmup_then_hard)
    hard_max_pass_rate: float = 0.5  # curriculum, pass_rate: highest pass rate after the warm-up


@dataclass
class VllmConfig:
    """Settings of the vLLM rollout engine (`rollout.engine: vllm`; k15rl/rollout/vllm_engine.py)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the model's
    gpu_memory_utilization: float = 0.5  # share of each GPU's memory vLLM may take (weights + KV cache)
    tensor_parallel_size: int = 1  # GPUs one engine spans
    enforce_eager: bool = True  # False: CUDA graphs / torch.compile (slower start, faster decoding)
    max_model_len: int = 0  # 0: prompt limit + rollout.max_new_tokens
    kv_cache_gb: float = 4.0  # CPU backend only: KV-cache size (VLLM_CPU_KVCACHE_SPACE)
    enable_sleep_mode: bool = False  # GPU only: free weights/KV cache while training (distributed.colocate)
    max_num_seqs: int = 0  # sequences decoded together (rollout.max_batch of this engine); 0: vLLM's default


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"  # hf: built-in continuous batching | vllm: pip install k15rl[vllm]
    vllm: VllmConfig = field(default_factory=VllmConfig)
    k: int = 8  # samples per prompt (the group of report §2.3.2)
    prompts_per_iteration: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256  # maximum response length, over all segments
    stop_strings: list[str] = field(default_factory=list)
    max_batch: int = 128  # slots of the continuous-batching engine (sequences decoded together)
    # Built-in engine: prompts are prefilled in chunks of at most this many tokens (rows x the
    # longest context), so the prefill's own KV cache and activations stay small next to the slots'
    prefill_tokens: int = 4096
    # Built-in engine: decode the slots in this many groups, each attending over its own
    # window of columns (rollout/slots.py), so short contexts next to long ones do not read
    # the long ones' width. 1 = one window for all slots.
    attention_groups: int = 1
    # Partial rollouts (report §2.6.2): new tokens per trajectory per iteration; a trajectory
    # that uses them up is cut, kept in the replay buffer and continued next iteration. 0 = off.
    segment_tokens: int = 0
    continue_first: bool = True  # cut trajectories take their rows first; new prompts fill the rest
    # The iteration's output-token budget (report §2.6.2; the hf and vllm engines, Ray
    # workers). All unfinished trajectories (cut, or new and not started:
    # prompts_per_iteration x k of them with continue_first) go to the engine at once, more than its max_batch slots, so a freed
    # slot takes the next at once; when the iteration has sampled this many tokens, those in
    # flight are cut and the rest wait in the replay buffer. 0 = off (the iteration ends
    # when its last trajectory stops or uses its segment_tokens).
    iteration_tokens: int = 0
    # Built-in engine: a cut trajectory's KV cache stays in the engine and its continuation
    # starts from it instead of re-encoding prompt and earlier segments. That prefix was then
    # encoded by the previous policy, so it needs algorithm.recompute_old_logprobs=true.
    keep_kv: bool = False
    train_on_stale_segments: bool = True  # tokens sampled by older policies count in the loss
    # Start the next iteration's rollout (by pi_i) while the trainer updates pi_i: generation
    # and training overlap, at the price of samples one policy version old.
    overlap: bool = False
    # Repeat detection: stop when the tail is one n-gram (n <= repeat_ngram) repeated
    # repeat_times times in a row over at least repeat_min_tokens tokens. 0 = off.
    repeat_ngram: int = 20
    repeat_times: int = 4
    repeat_min_tokens: int = 32
    # Warn (one line per iteration) when the engine's recorded log-probs differ from the trainer's
    # for the same tokens by more than this mean |gap| in nats (metric rollout/logprob_gap_mean). 0 = never
    logprob_gap_warn: float = 0.1


@dataclass
class RewardConfig:
    length_weight: float = 0.0  # w of report §2.3.3 (not given there)
    length_warmup_iterations: int = 0  # no length reward before this iteration
    repeat_penalty: float = 0.0  # subtracted from the reward of a trajectory stopped by repeat detection
    # per data source ("source=reward": a verifier or task name, code_tests, judge, or module:function;
    # rewards/compose.py); sources not listed use their task's verifier
    sources: list[str] = field(default_factory=list)
    # per reward call (a batched one, the judge: per response of its batch); 0 = none. A timeout
    # or an exception scores 0 and is counted
    timeout_s: float = 60.0
    # a call still running this long (per response, as timeout_s) after it started never returns: the
    # run stops with one line naming the source and the iteration (exit code 3; resume from the last
    # checkpoint). 0 = never
    stuck_timeout_s: float = 600.0
    workers: int = 2  # reward calls in parallel (code runs in sandbox processes)
    judge_model: str | None = None  # model folder or "builtin" for the 'judge' reward
    # where the judge runs (in the process that scores: the master with Ray), apart from the
    # policy's distributed.device: a float32 judge beside the engine and trainer may not fit
    judge_device: str = "cpu"


@dataclass
class AlgorithmConfig:
    loss: Literal["k15", "grpo", "rest"] = "k15"  # k15rl.algorithms.LOSSES; arguments: algorithms.make_loss
    tau: float = 1.0  # k15: weight of the l2 term (report §2.3.2; value not given there)
    normalization: Literal["sequence", "token"] = "sequence"  # k15: sequence (report) | token
    clip_eps: float = 0.2  # grpo: PPO clip range of the token ratio
    std_eps: float = 1e-6  # grpo: added to the group's reward standard deviation
    rest_threshold: float = 0.5  # rest: samples with a reward above it are fitted
    lr: float = 1e-4
    # The learning rate across the run's iterations (the report gives none): constant, or
    # from lr at the first iteration down to lr * lr_end_ratio at the last (update.lr_at)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_end_ratio: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    minibatches: int = 1  # optimizer steps per epoch; each takes whole groups
    epochs: int = 1  # passes over the iteration's samples
    micro_batch: int = 64  # rows per forward pass (gradient accumulation)
    # > 0: forward passes of at most this many tokens instead (rows x the longest row; rows of
    # similar length together, the cheapest such chunking: update.token_chunks; a longer row goes
    # alone); micro_batch is then unused. 0: micro_batch rows per pass
    micro_batch_tokens: int = 0
    activation_checkpointing: bool = False  # recompute each layer's activations in the backward (less memory)
    recompute_old_logprobs: bool = False  # True: pi_i log-probs from the trainer, not the sampler
    # The report resets the optimizer at every iteration (§2.3.2). False: one AdamW for the whole
    # run, its moments carried across iterations and checkpoints (the ablation; local backend only)
    optimizer_reset: bool = True
    max_consecutive_skips: int = 5  # stop after this many optimizer steps in a row with a NaN/inf loss or gradient
    autocast_bf16: bool = False


@dataclass
class EvalConfig:
    every: int = 10  # iterations between evaluations (and at start and end); 0 = only start/end
    temperature: float = 1.0  # 0 = greedy
    samples_per_prompt: int = 1
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens
    # Sequences an evaluation decodes together: its prompts go to the engine in chunks of at
    # most this many samples, so its KV cache holds at most this many (each its own prompt:
    # unlike a rollout's groups, no two share one). 0: all at once (up to rollout.max_batch).
    max_batch: int = 0
    # Write every evaluation's responses (question, answer, response, reward, tokens) to
    # OUT/eval_responses/iter<N>_T<temperature>.jsonl, one row per sample.
    save_responses: bool = False


@dataclass
class DistributedConfig:
    """Placement of the loop's parts (report §2.6; docs/distributed.md). `local`: one
    process. `ray`: this process is the master (prompts, replay buffer, rewards,
    checkpoints); rollout workers and trainer workers are Ray actors."""

    backend: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: an existing cluster ("auto", "ray://head:10001"); None: start one here
    rollout_workers: int = 2  # ray: actors each holding a rollout engine
    trainer_workers: int = 1  # ray: >1 shards the model with FSDP2 (data parallel, gloo on CPU / nccl on GPU)
    chunk_size: int = 16  # ray: requests a rollout worker pulls at a time
    device: Literal["cpu", "cuda"] = "cpu"  # where trainer (and hf engine) workers compute
    cpus_per_worker: float = 1.0  # ray: CPUs reserved per actor
    gpus_per_worker: float = 0.0  # ray: GPUs per actor (1 on GPU clusters; 0.5 when colocated)
    colocate: bool = False  # rollout worker i and trainer worker i share a device; engines sleep while training
    num_cpus: int = 0  # ray, local cluster: CPUs it may use; 0 = all
    object_store_mb: int = 1024  # ray, local cluster: object store size (weights travel through it)
    # ray: the longest one call to the workers may take (a rollout, an update, a weight sync, start-up);
    # past it, or when a worker dies, the run stops with one line naming the worker and the iteration
    # (exit code 3; resume from the last checkpoint). 0 = no limit
    timeout_s: float = 1800.0


# distributed keys that only the Ray backend reads
RAY_ONLY = ("address", "rollout_workers", "chunk_size", "cpus_per_worker", "gpus_per_worker", "num_cpus",
            "object_store_mb", "timeout_s")
_DISTRIBUTED_DEFAULTS = DistributedConfig()


@dataclass
class LogConfig:
    """Loggers beside metrics.jsonl and eval.jsonl (k15rl/trainer/loggers.py; docs/logging.md).
    Both are optional extras: pip install 'k15rl[tensorboard]' / 'k15rl[wandb]'."""

    tensorboard: bool = False  # event files under OUT/tensorboard
    wandb: bool = False  # a Weights & Biases run under OUT/wandb
    wandb_project: str = "k15rl"
    wandb_run_name: str | None = None  # None: the out folder's name
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline: no network; `wandb sync` later


@dataclass
class TrainConfig:
    out: str = "runs/train"
    iterations: int = 60
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores
    checkpoint_every: int = 0  # iterations between checkpoints (and one at the end); 0 = only at the end
    checkpoint_keep: int = 3  # newest checkpoints kept; 0 = all
    time_budget_minutes: float = 0.0  # stop after this much iteration time (evaluations excluded); 0 = none
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> "TrainConfig":
        """Range checks that types alone cannot express. Raises UserError naming the key.

        Names that registries resolve (data.tasks, data.verifier, reward.sources) are
        checked by `k15rl.trainer.resolve.check_names`, beside the registries."""
        checks: list[tuple[bool, str, Any, str]] = [
            (self.iterations >= 1, "iterations", self.iterations, "must be >= 1"),
            (self.rollout.k >= 1, "rollout.k", self.rollout.k, "must be >= 1"),
            (self.rollout.k >= 2 or self.algorithm.loss == "rest", "rollout.k", self.rollout.k,
             "must be >= 2: the mean-reward baseline needs several samples per prompt"),
            (self.rollout.prompts_per_iteration >= 1, "rollout.prompts_per_iteration",
             self.rollout.prompts_per_iteration, "must be >= 1"),
            (self.rollout.temperature >= 0, "rollout.temperature", self.rollout.temperature, "must be >= 0"),
            (0 < self.rollout.top_p <= 1, "rollout.top_p", self.rollout.top_p, "must be in (0, 1]"),
            (self.rollout.max_new_tokens >= 1, "rollout.max_new_tokens", self.rollout.max_new_tokens, "must be >= 1"),
            (self.rollout.max_batch >= 1, "rollout.max_batch", self.rollout.max_batch, "must be >= 1"),
            (self.rollout.prefill_tokens >= 1, "rollout.prefill_tokens", self.rollout.prefill_tokens, "must be >= 1"),
            (self.rollout.attention_groups >= 1, "rollout.attention_groups", self.rollout.attention_groups,
             "must be >= 1"),
            (self.rollout.segment_tokens >= 0, "rollout.segment_tokens", self.rollout.segment_tokens, "must be >= 0"),
            (not self.rollout.keep_kv or self.rollout.segment_tokens > 0 or self.rollout.iteration_tokens > 0,
             "rollout.keep_kv", self.rollout.keep_kv, "needs partial rollouts (rollout.segment_tokens > 0 or "
             "rollout.iteration_tokens > 0): only cut trajectories keep their KV cache"),
            (self.rollout.iteration_tokens >= 0, "rollout.iteration_tokens", self.rollout.iteration_tokens,
             "must be >= 0"),
            (not self.rollout.iteration_tokens or self.rollout.continue_first, "rollout.iteration_tokens",
             self.rollout.iteration_tokens, "needs rollout.continue_first=true: unstarted trajectories wait in "
             "the buffer, and new prompts only top it up"),
            (not self.rollout.keep_kv or self.rollout.engine == "hf", "rollout.keep_kv", self.rollout.keep_kv,
             "needs the built-in engine (rollout.engine=hf); vLLM re-encodes continued prefixes"),
            (not self.rollout.keep_kv or self.algorithm.recompute_old_logprobs, "rollout.keep_kv",
             self.rollout.keep_kv, "needs algorithm.recompute_old_logprobs=true: a continuation attends to a "
             "prefix encoded by the previous policy, so the engine's log-probs are not pi_i's"),
            (self.rollout.repeat_ngram >= 0, "rollout.repeat_ngram", self.rollout.repeat_ngram, "must be >= 0"),
            (self.rollout.repeat_times >= 2, "rollout.repeat_times", self.rollout.repeat_times, "must be >= 2"),
            (self.rollout.repeat_min_tokens >= 1, "rollout.repeat_min_tokens", self.rollout.repeat_min_tokens,
             "must be >= 1"),
            (self.reward.repeat_penalty >= 0, "reward.repeat_penalty", self.reward.repeat_penalty, "must be >= 0"),
            (self.algorithm.tau > 0, "algorithm.tau", self.algorithm.tau, "must be > 0"),
            (self.algorithm.clip_eps > 0, "algorithm.clip_eps", self.algorithm.clip_eps, "must be > 0"),
            (self.algorithm.std_eps > 0, "algorithm.std_eps", self.algorithm.std_eps, "must be > 0"),
            (self.algorithm.lr > 0, "algorithm.lr", self.algorithm.lr, "must be > 0"),
            (0 <= self.algorithm.lr_end_ratio <= 1, "algorithm.lr_end_ratio", self.algorithm.lr_end_ratio,
             "must be in [0, 1]"),
            (self.algorithm.minibatches >= 1, "algorithm.minibatches", self.algorithm.minibatches, "must be >= 1"),
            (self.algorithm.minibatches <= self.rollout.prompts_per_iteration, "algorithm.minibatches",
             self.algorithm.minibatches, "must be <= rollout.prompts_per_iteration (mini-batches hold whole groups)"),
            (self.algorithm.epochs >= 1, "algorithm.epochs", self.algorithm.epochs, "must be >= 1"),
            (self.algorithm.micro_batch >= 1, "algorithm.micro_batch", self.algorithm.micro_batch, "must be >= 1"),
            (self.algorithm.micro_batch_tokens >= 0, "algorithm.micro_batch_tokens", self.algorithm.micro_batch_tokens,
             "must be >= 0 (0 = algorithm.micro_batch rows per pass)"),
            (self.rollout.logprob_gap_warn >= 0, "rollout.logprob_gap_warn", self.rollout.logprob_gap_warn,
             "must be >= 0 (0 = never warn)"),
            (0 <= self.sampler.prior <= 1, "sampler.prior", self.sampler.prior, "must be in [0, 1]"),
            (self.sampler.prior_weight > 0, "sampler.prior_weight", self.sampler.prior_weight, "must be > 0"),
            (0 < self.sampler.min_weight <= 1, "sampler.min_weight", self.sampler.min_weight, "must be in (0, 1]"),
            (self.sampler.warmup_iterations >= 0, "sampler.warmup_iterations", self.sampler.warmup_iterations,
             "must be >= 0"),
            (self.reward.length_weight >= 0, "reward.length_weight", self.reward.length_weight, "must be >= 0"),
            (self.data.train_per_level >= 1, "data.train_per_level", self.data.train_per_level, "must be >= 1"),
            (0 <= self.data.few_shot <= 32, "data.few_shot", self.data.few_shot,
             "must be in [0, 32] (worked examples in every prompt: more fit no context, and rendering "
             "every prompt with them takes hours)"),
            (self.data.test_per_level >= 1, "data.test_per_level", self.data.test_per_level, "must be >= 1"),
            (self.eval.temperature >= 0, "eval.temperature", self.eval.temperature, "must be >= 0"),
            (self.eval.samples_per_prompt >= 1, "eval.samples_per_prompt", self.eval.samples_per_prompt, "must be >= 1"),
            (self.eval.every >= 0, "eval.every", self.eval.every, "must be >= 0"),
            (self.eval.max_batch >= 0, "eval.max_batch", self.eval.max_batch, "must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be >= 0"),
            (self.checkpoint_keep >= 0, "checkpoint_keep", self.checkpoint_keep, "must be >= 0"),
            (self.algorithm.max_consecutive_skips >= 1, "algorithm.max_consecutive_skips",
             self.algorithm.max_consecutive_skips, "must be >= 1"),
            (self.time_budget_minutes >= 0, "time_budget_minutes", self.time_budget_minutes, "must be >= 0"),
            (self.threads >= 0, "threads", self.threads, "must be >= 0"),
            (bool(self.out.strip()), "out", self.out, "must name a folder"),
            (0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2**32)"),
            (0 <= self.data.seed < 2**32, "data.seed", self.data.seed, "must be in [0, 2**32)"),
            (self.eval.max_new_tokens is None or self.eval.max_new_tokens >= 1, "eval.max_new_tokens",
             self.eval.max_new_tokens, "must be >= 1 (or null: rollout.max_new_tokens)"),
            (len(self.algorithm.betas) == 2 and all(0 <= b < 1 for b in self.algorithm.betas), "algorithm.betas",
             self.algorithm.betas, "must be two numbers in [0, 1)"),
            (self.algorithm.weight_decay >= 0, "algorithm.weight_decay", self.algorithm.weight_decay, "must be >= 0"),
            (self.algorithm.grad_clip > 0, "algorithm.grad_clip", self.algorithm.grad_clip, "must be > 0"),
            *self._lora_checks(),
            *self._distributed_checks(),
            *self._optimizer_checks(),
        ]
        checks = [(False, key, value, "must be a finite number") for key, value in _non_finite(self)] + checks
        for ok, key, value, why in checks:
            if not ok:
                raise UserError(f"config key {key}: {why} (got {value!r})")
        self._validate_data()
        self._validate_chat_template()
        return self

    def _validate_chat_template(self) -> None:
        """A Jinja `model.chat_template` that does not parse fails here, not at the first prompt."""
        template = self.model.chat_template
        if template in (None, "plain"):
            return
        import jinja2

        try:
            jinja2.Environment().parse(template)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"config key model.chat_template: not a valid Jinja template ({e.message}, "
                            f"line {e.lineno})") from None

    def _lora_checks(self) -> list[tuple[bool, str, Any, str]]:
        lo = self.model.lora
        return [
            (lo.rank >= 0, "model.lora.rank", lo.rank, "must be >= 0 (0 = off)"),
            (lo.alpha > 0, "model.lora.alpha", lo.alpha, "must be > 0"),
            (0 <= lo.dropout < 1, "model.lora.dropout", lo.dropout, "must be in [0, 1)"),
            (not lo.rank or bool(lo.target_modules), "model.lora.target_modules", lo.target_modules,
             "must name at least one module"),
            (not lo.rank or self.distributed.backend == "local", "model.lora.rank", lo.rank,
             "is not supported with distributed.backend=ray yet: use distributed.backend=local, or model.lora.rank=0"),
        ]

    def _optimizer_checks(self) -> list[tuple[bool, str, Any, str]]:
        return [(self.algorithm.optimizer_reset or self.distributed.backend == "local", "algorithm.optimizer_reset",
                 self.algorithm.optimizer_reset, "false needs distributed.backend=local (Ray trainer workers "
                 "create their optimizer each iteration)")]

    def _distributed_checks(self) -> list[tuple[bool, str, Any, str]]:
        d, v = self.distributed, self.rollout.vllm
        return [
            (0 < v.gpu_memory_utilization <= 1, "rollout.vllm.gpu_memory_utilization", v.gpu_memory_utilization,
             "must be in (0, 1]"),
            (v.tensor_parallel_size >= 1, "rollout.vllm.tensor_parallel_size", v.tensor_parallel_size, "must be >= 1"),
            (v.max_model_len >= 0, "rollout.vllm.max_model_len", v.max_model_len, "must be >= 0"),
            (v.kv_cache_gb > 0, "rollout.vllm.kv_cache_gb", v.kv_cache_gb, "must be > 0"),
            (d.rollout_workers >= 1, "distributed.rollout_workers", d.rollout_workers, "must be >= 1"),
            (d.trainer_workers >= 1, "distributed.trainer_workers", d.trainer_workers, "must be >= 1"),
            (d.trainer_workers == 1 or d.backend == "ray", "distributed.trainer_workers", d.trainer_workers,
             "must be 1 with distributed.backend=local (sharded training runs on Ray)"),
            (d.chunk_size >= 1, "distributed.chunk_size", d.chunk_size, "must be >= 1"),
            (d.cpus_per_worker >= 0, "distributed.cpus_per_worker", d.cpus_per_worker, "must be >= 0"),
            (d.gpus_per_worker >= 0, "distributed.gpus_per_worker", d.gpus_per_worker, "must be >= 0"),
            (not d.colocate or d.backend == "local" or d.rollout_workers == d.trainer_workers,
             "distributed.colocate", d.colocate,
             "needs distributed.rollout_workers == distributed.trainer_workers (worker i shares device i)"),
            (not (d.colocate and self.rollout.overlap), "distributed.colocate", d.colocate,
             "cannot be combined with rollout.overlap (colocated phases take turns on one device)"),
            (d.num_cpus >= 0, "distributed.num_cpus", d.num_cpus, "must be >= 0"),
            (d.object_store_mb >= 64, "distributed.object_store_mb", d.object_store_mb, "must be >= 64"),
            (d.timeout_s >= 0, "distributed.timeout_s", d.timeout_s, "must be >= 0 (0 = no limit)"),
        ]

    def ignored_ray_settings(self) -> list[str]:
        """Ray-only settings changed from their defaults on a one-process run (a Ray run's
        config resumed locally, a Ray preset switched to local): the run says it ignores
        them, rather than refusing a config that is otherwise fine."""
        d = self.distributed
        if d.backend == "ray":
            return []
        return [f"distributed.{k}={getattr(d, k)}" for k in RAY_ONLY if getattr(d, k) != getattr(_DISTRIBUTED_DEFAULTS, k)]

    def _validate_data(self) -> None:
        d, s = self.data, self.sampler
        checks: list[tuple[bool, str, Any, str]] = [
            (0 <= d.test_fraction < 1, "data.test_fraction", d.test_fraction, "must be in [0, 1)"),
            (not (d.test_fraction and d.test_files), "data.test_fraction", d.test_fraction,
             "must be 0 when data.test_files are given (one source of test prompts)"),
            (d.max_prompt_tokens >= 0, "data.max_prompt_tokens", d.max_prompt_tokens, "must be >= 0"),
            (0 <= s.hard_max_pass_rate <= 1, "sampler.hard_max_pass_rate", s.hard_max_pass_rate, "must be in [0, 1]"),
        ]
        for ok, key, value, why in checks:
            if not ok:
                raise UserError(f"config key {key}: {why} (got {value!r})")


def _non_finite(node: Any, key: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every inf or NaN number in a config tree, lists included: no
    setting means anything by them, and range checks such as `lr > 0` let inf through."""
    if dataclasses.is_dataclass(node):
        return [bad for f in dataclasses.fields(node)
                for bad in _non_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)]
    if isinstance(node, (list, tuple)):
        return [bad for i, v in enumerate(node) for bad in _non_finite(v, f"{key}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [(key, node)]
    return []


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _Raw(str):
    """A command-line override value, not yet parsed: kept verbatim where the key is a
    string (so "a: b" stays text), parsed as YAML elsewhere (numbers, lists, null)."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where lossless (int -> float)."""
    if isinstance(value, _Raw):
        if typing.get_origin(tp) is Literal:
            value = str(value)
        elif tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)
                           and value not in ("null", "~", "")):
            return str(value)
        else:
            try:
                value = yaml.safe_load(value) if value != "" else None
            except yaml.YAMLError:
                value = str(value)
    origin = typing.get_origin(tp)
    if origin is Literal:  # a string choice: one of the listed values
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise UserError(f"config key {key}: must be one of {', '.join(map(repr, choices))} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError:
                pass
        raise UserError(f"config key {key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key {key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise UserError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        raise UserError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise UserError(f"unknown config key '{prefix}{k}'; known keys here: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"config key {dotted}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def preset_path(name_or_path: str) -> Path:
    """A YAML file path, or the name of a preset shipped in k15rl/configs/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    if p.is_dir():
        raise UserError(f"config file {name_or_path}: is a folder, not a YAML file")
    if p.is_file():  # a YAML file by another name
        return p
    raise UserError(f"config file {name_or_path} does not exist (presets: {', '.join(list_presets())})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error
    (PyYAML keeps the last one in silence, so `iterations: 1` ... `iterations: 5` ran 5)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(config: str | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """TrainConfig from an optional YAML file/preset (or a mapping of config keys, e.g.
    `to_dict` of a TrainConfig) plus `key=value` overrides."""
    tree: dict = {}
    if isinstance(config, dict):
        tree = copy.deepcopy(config)
    elif config:
        path = preset_path(config)
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{path}: the top level must be a mapping of config keys")
        tree = loaded or {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _Raw(raw))
    return _build(TrainConfig, tree).validate()
