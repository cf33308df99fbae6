"""LLMEngine: requests in, one scheduled model step at a time, RequestOutputs out.

    add_request -> InputProcessor (a checked Request, one Sequence per sample) -> Scheduler.schedule
        -> ModelRunner.run (model + Sampler) -> Scheduler.update_after_step
        -> stop checks (EOS ids, stop ids / strings, length) -> a RequestOutput per request that advanced

A request's whole state (its samples' tokens, KV blocks, text and metrics) lives in its Request;
the engine keeps it only until the step that returns its last output, or until `abort`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fastllm.engine.block_manager import BlockManager
from fastllm.engine.config import EngineConfig
from fastllm.engine.cuda_graphs import graph_blocks_per_seq, supports_cuda_graphs
from fastllm.engine.memory import num_kv_blocks, step_memory_reserve
from fastllm.engine.model_runner import ModelRunner
from fastllm.engine.outputs import EngineStats, RequestOutput
from fastllm.engine.placement import Placement
from fastllm.engine.processor import InputProcessor
from fastllm.engine.request import Request
from fastllm.engine.sampler import Sampler
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.scheduler import Scheduler
from fastllm.engine.sequence import Sequence, SequenceStatus
from fastllm.engine.step_inputs import StepInputs
from fastllm.loader.prompt_format import PromptFormat
from fastllm.model.backend import get_backend
from fastllm.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from fastllm.distributed.group import TensorParallelGroup
    from fastllm.distributed.launch import ParallelRanks
    from fastllm.tokenizer import Tokenizer


def _fallback_prompt_format(tokenizer: Any, model: LlamaForCausalLM) -> PromptFormat:
    """For a model built in memory: no BOS added, the tokenizer's and the config's EOS, the tokenizer's template."""
    declared = {tokenizer.eos_id, model.config.eos_token_id} - {None}
    return PromptFormat(
        add_bos_token=False, eos_token_ids=tuple(sorted(declared)),
        chat_template=getattr(tokenizer, "chat_template", None),
    )


def engine_max_model_len(config: EngineConfig, model: LlamaForCausalLM) -> int:
    """`config.max_model_len`, checked against the model's positions; None = the model's."""
    max_positions = model.config.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > max_positions:
        raise ValueError(f"max_model_len ({config.max_model_len}) must be <= the model's max_position_embeddings ({max_positions})")
    return config.max_model_len or max_positions


def build_model_runner(
    model: LlamaForCausalLM,
    config: EngineConfig,
    max_model_len: int,
    sampler: Sampler | None,
    *,
    group: TensorParallelGroup | None = None,
    step_sink: Callable[[StepInputs], None] | None = None,
) -> ModelRunner:
    """The model's runner: its KV pool sized from memory (what a step needs besides the pool held
    back; on a tensor-parallel group the smallest of every rank's size), CUDA graphs captured.

    Every rank of a group runs this with the same arguments, in step: the sizing's dummy steps and
    the graph captures run the model's collectives.
    """
    budget = config.token_budget
    max_decode_batch = min(config.max_num_seqs, budget)  # the scheduler's cap on running sequences
    graph_batch = max_decode_batch if supports_cuda_graphs(model) and not config.enforce_eager else None

    def reserve() -> int:
        return step_memory_reserve(
            model, block_size=config.block_size, max_prefill_tokens=budget, max_model_len=max_model_len,
            max_sampled_rows=max_decode_batch, graph_batch_size=graph_batch,
            graph_blocks_per_seq=graph_blocks_per_seq(max_model_len, config.block_size),
        )

    num_blocks = num_kv_blocks(config, model, reserve)
    if group is not None:
        num_blocks = group.min_int(num_blocks)
    return ModelRunner(
        model, sampler, num_blocks=num_blocks, block_size=config.block_size, cuda_graph_max_batch=graph_batch,
        max_model_len=max_model_len, step_sink=step_sink,
    )


class LLMEngine:
    """The engine over a built model and its tokenizer; `LLMEngine.from_config` loads both.

    prompt_format: BOS, EOS ids and chat template (`fastllm.loader.load` reads them from the model
    files); None = no BOS, the tokenizer's and the model config's EOS, the tokenizer's template.
    ranks: the other ranks of a tensor-parallel model (rank 0's model is `model`), which run every
    step with it; `close()` stops them.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        tokenizer: Tokenizer,
        config: EngineConfig,
        prompt_format: PromptFormat | None = None,
        ranks: ParallelRanks | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.model_config = model.config
        self.tokenizer = tokenizer
        prompt_format = prompt_format or _fallback_prompt_format(tokenizer, model)
        vocab_size = model.vocab_size
        self.eos_token_ids = tuple(i for i in prompt_format.eos_token_ids if i < vocab_size)

        self.max_model_len = engine_max_model_len(config, model)
        self.block_size = config.block_size
        self.ranks = ranks
        self.sampler = Sampler(model.backend, self.eos_token_ids, num_text_tokens=tokenizer.vocab_size)
        self.runner = build_model_runner(
            model, config, self.max_model_len, self.sampler, group=None if ranks is None else ranks.group,
            step_sink=None if ranks is None else ranks.send_step,
        )
        self.num_kv_blocks = self.runner.num_blocks
        self.uses_cuda_graphs = self.runner.decode_graphs is not None
        self.block_manager = BlockManager(
            self.num_kv_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.token_budget
        )
        self.processor = InputProcessor(
            tokenizer, prompt_format, vocab_size=vocab_size, max_model_len=self.max_model_len,
            num_kv_blocks=self.num_kv_blocks, block_size=config.block_size,
        )
        self._requests: dict[str, Request] = {}  # unfinished requests, in arrival order
        self._next_request_id = itertools.count()

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        """Resolve device, dtype and backend, load the model files in one pass, build the engine
        (with `tensor_parallel_size` > 1: start the other ranks, each loading its own part)."""
        # Imported here: the engine core needs neither the loaders nor the C++ tokenizer.
        from fastllm.loader import load
        from fastllm.model import load_model
        from fastllm.model.linear import encoded_types

        placement = Placement.resolve(config)
        device, dtype, backend = placement.device, placement.dtype, get_backend(placement.backend)
        # GGUF matrices the model reads encoded stay in the file's memory mapping.
        keep_encoded = encoded_types(backend.name, device, dtype)
        if config.tensor_parallel_size == 1:
            files = load(config.model, keep_encoded=keep_encoded)
            model = load_model(files.checkpoint, dtype=dtype, device=device, backend=backend)
            return cls(model, files.tokenizer, config, files.prompt_format)

        from fastllm.distributed.launch import ParallelRanks, shard_for

        files = load(config.model, keep_encoded=keep_encoded, shard=shard_for(placement, 0, config.tensor_parallel_size))
        ranks = ParallelRanks.start(config, placement)
        try:
            model = load_model(files.checkpoint, dtype=dtype, device=ranks.group.device, backend=backend,
                               group=ranks.group)
            ranks.wait_loaded()
            return cls(model, files.tokenizer, config, files.prompt_format, ranks=ranks)
        except BaseException:
            ranks.close()
            raise

    def close(self) -> None:
        """Stop the other tensor-parallel ranks (nothing to do on one rank); the engine cannot step after."""
        if self.ranks is not None:
            self.ranks.close()

    # -- requests -----------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        prompt_text: str | None = None,
    ) -> str:
        """Check and queue one request; returns its id (`request_id`, or a fresh one for None).

        prompt: text (encoded with special tokens recognized, BOS first where the model wants it)
        or token ids (used as they are; `prompt_text` then names the text they came from, for the
        outputs). params: None = SamplingParams(). Raises ValueError or TypeError, queueing
        nothing, for a request that can never run.
        """
        if request_id is None:
            request_id = self._fresh_request_id()
        elif not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str or None, got {type(request_id).__name__}")
        elif request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use by an unfinished request")
        request = self.processor.make_request(
            request_id, prompt, SamplingParams() if params is None else params, prompt_text=prompt_text
        )
        self._requests[request_id] = request
        # Later samples wait for the first to put the prompt in the prefix cache (see engine.request).
        first = request.unqueued[:1] if self.config.enable_prefix_caching else request.unqueued
        request.num_queued = len(first)
        for sample in first:
            self.scheduler.add(sample)
        return request_id

    def _fresh_request_id(self) -> str:
        while (request_id := str(next(self._next_request_id))) in self._requests:
            pass
        return request_id

    def abort(self, request_id: str) -> None:
        """Drop a request at once, wherever it is (waiting, prefilling, decoding): its KV blocks are
        freed and it gets no more outputs. A finished, aborted or unknown id is ignored."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        for sample in request.samples:
            if sample.is_finished:
                continue
            if sample in request.unqueued:
                sample.status = SequenceStatus.FINISHED  # it never held blocks
            else:
                self.scheduler.finish(sample)
            sample.finish_reason = "abort"

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self._requests)

    def stats(self) -> EngineStats:
        """Running and waiting requests, KV blocks, prefix-cache counts, now."""
        running = sum(
            1 for request in self._requests.values()
            if any(sample.status is SequenceStatus.RUNNING for sample in request.samples)
        )
        blocks = self.block_manager
        return EngineStats(
            num_running_requests=running,
            num_waiting_requests=len(self._requests) - running,
            num_kv_blocks=blocks.num_blocks,
            num_free_kv_blocks=blocks.num_free_blocks,
            prefix_cache_queries=blocks.num_cache_queries,
            prefix_cache_hits=blocks.num_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
        )

    # -- stepping -----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one model step; returns one RequestOutput per request that got a token (in arrival
        order), finished ones included. Returns [] when there is nothing to do."""
        batch = self.scheduler.schedule()
        if batch is None:
            if self.scheduler.has_unfinished():
                # Unreachable by construction (admission checks + preemption); fail loudly, never spin.
                raise RuntimeError(f"scheduler made no progress with {len(self.scheduler.waiting)} waiting requests")
            return []
        try:
            output = self.runner.run(batch)
        except RuntimeError as error:
            if self.ranks is None:
                raise
            raise self.ranks.failure("a tensor-parallel step failed") from error
        self.scheduler.update_after_step(batch)
        now = time.perf_counter()
        advanced: dict[str, Request] = {}
        for seq, token, logprobs in zip(batch.sampled_seqs, output.token_ids, output.logprobs):
            request = self._requests[seq.request_id]
            self._append_token(seq, token, logprobs, now)
            advanced[request.request_id] = request
            if seq.index == 0 and request.unqueued:
                # The prompt is in the prefix cache now: the other samples go next, ahead of
                # later requests (their request arrived first).
                self.scheduler.add_first(request.unqueued)
                request.num_queued = len(request.samples)
        outputs = []
        for request in sorted(advanced.values(), key=lambda r: r.metrics.arrival_time):
            if request.is_finished:
                request.metrics.finished_time = now
                del self._requests[request.request_id]
            outputs.append(request.take_output())
        return outputs

    def _append_token(self, seq: Sequence, token: int, logprobs: dict[int, float] | None, now: float) -> None:
        seq.append_token(token)
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = now
        seq.metrics.last_token_time = now
        if logprobs is not None:
            seq.logprobs.append(logprobs)
        self._check_stop(seq, token)
        if seq.finish_reason is not None:
            seq.detokenizer.flush()
            self.scheduler.finish(seq)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        params = seq.params
        may_stop = seq.num_output_tokens >= params.min_tokens
        if may_stop and ((token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids):
            # The stop token stays in token_ids but not in the text (as in vLLM).
            seq.finish_reason = "stop"
            seq.stop_reason = token if token in params.stop_token_ids else None
            return
        detokenizer = seq.detokenizer
        detokenizer.add(token, check_stop=may_stop)
        if detokenizer.stopped_by is not None:
            seq.finish_reason = "stop"
            seq.stop_reason = detokenizer.stopped_by
        elif seq.num_output_tokens >= seq.max_tokens:
            seq.finish_reason = "length"
