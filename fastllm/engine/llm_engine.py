"""LLMEngine: requests in, one scheduled model step at a time, finished sequences out.

    add_request -> Sequence -> Scheduler.schedule -> ModelRunner.run (model + Sampler)
                -> Scheduler.update_after_step -> stop checks (EOS, stop ids/strings, length)

Everything that can be checked is checked when a request is added, so a request that is
accepted always finishes: it fits the model's context and the KV pool on its own, and the
scheduler preempts other work to make room for it when needed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastllm.engine.block_manager import BlockManager
from fastllm.engine.cuda_graphs import graph_blocks_per_seq, supports_cuda_graphs
from fastllm.engine.detokenizer import IncrementalDetokenizer
from fastllm.engine.memory import step_memory_reserve
from fastllm.engine.model_runner import ModelRunner, kv_cache_bytes_per_block
from fastllm.engine.sampler import Sampler
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.scheduler import Scheduler
from fastllm.engine.sequence import Sequence
from fastllm.loader.default_model import default_model_path
from fastllm.model.backend import get_backend, resolve_backend
from fastllm.model.config import ModelConfig
from fastllm.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer

# KV pool budget on CPU, where "free memory" is shared with everything else on the machine.
CPU_KV_CACHE_BYTES = 1 << 30
DEFAULT_MAX_NUM_BATCHED_TOKENS = 4096
MAX_BLOCK_SIZE = 256
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def _positive_int(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings (see `fastllm.LLM` for their meaning); validated on construction."""

    model: str | os.PathLike | None = None
    device: str | torch.device = "auto"
    dtype: str | torch.dtype = "auto"
    backend: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        _positive_int("block_size", self.block_size)
        if self.block_size > MAX_BLOCK_SIZE or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two in [1, {MAX_BLOCK_SIZE}], got {self.block_size}")
        _positive_int("num_kv_blocks", self.num_kv_blocks, optional=True)
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens, optional=True)
        _positive_int("max_model_len", self.max_model_len, optional=True)
        for name in ("enable_prefix_caching", "enforce_eager"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        u = self.gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 < u <= 1:
            raise ValueError(f"gpu_memory_utilization must be a float in (0, 1], got {u!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> the current CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16' (or the torch dtype), got {dtype!r}")
    return resolved


def _num_kv_blocks(
    config: EngineConfig, model_config: ModelConfig, dtype: torch.dtype, device: torch.device, reserve: Callable[[], int]
) -> int:
    """The pool size: `num_kv_blocks` if given, else a memory budget divided by the bytes per block.

    On CUDA the budget is `gpu_memory_utilization` of the free memory less `reserve()`: what the
    steps themselves need (activations, CUDA graphs), measured only when the pool is sized here.
    """
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = kv_cache_bytes_per_block(model_config, config.block_size, dtype)
    if device.type == "cuda":
        reserved = reserve()
        torch.cuda.empty_cache()  # the measuring steps' cached blocks count as free below
        free, _total = torch.cuda.mem_get_info(device)
        budget = int(free * config.gpu_memory_utilization) - reserved
    else:
        budget = CPU_KV_CACHE_BYTES
    num_blocks = budget // per_block
    if num_blocks < 1:
        raise ValueError(
            f"no room for the KV cache: {max(budget, 0)} bytes available, one block of {config.block_size} tokens "
            f"needs {per_block}; free memory, raise gpu_memory_utilization or pass num_kv_blocks"
        )
    return num_blocks


def load_tokenizer(path: str) -> Tokenizer:
    """A model's tokenizer: an HF folder's tokenizer.json, or the vocabulary inside a GGUF file."""
    from fastllm.tokenizer import Tokenizer  # the C++ tokenizer: only loaded when a model is

    return Tokenizer.from_file(path) if os.path.isdir(path) else Tokenizer.from_gguf(path)


def _adds_bos_token(path: str) -> bool:
    """Whether the model expects BOS before a text prompt: GGUF `tokenizer.ggml.add_bos_token`, or an
    HF folder's tokenizer_config.json `add_bos_token` (the tokenizer itself never adds it)."""
    if os.path.isdir(path):
        config_path = os.path.join(path, "tokenizer_config.json")
        if not os.path.isfile(config_path):
            return False
        with open(config_path, encoding="utf-8") as f:
            return json.load(f).get("add_bos_token") is True
    from fastllm.loader.gguf_file import GGUFFile

    return GGUFFile(path).metadata.get("tokenizer.ggml.add_bos_token") is True


@dataclass
class StepOutput:
    """What one engine step did: the sequences that got a token, and how many tokens it computed."""

    seqs: list[Sequence]
    is_prefill: bool
    num_tokens: int


class LLMEngine:
    """The engine over a built model and its tokenizer; `LLMEngine.from_config` loads both."""

    def __init__(
        self, model: LlamaForCausalLM, tokenizer: Tokenizer, config: EngineConfig, *, add_bos_token: bool = False
    ) -> None:
        self.config = config
        self.model = model
        self.model_config = model.config
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token and tokenizer.bos_id is not None
        self.vocab_size = self.model_config.vocab_size
        self.eos_token_ids = self._eos_token_ids()

        max_positions = self.model_config.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > max_positions:
            raise ValueError(
                f"max_model_len ({config.max_model_len}) must be <= the model's max_position_embeddings ({max_positions})"
            )
        self.max_model_len = config.max_model_len or max_positions
        self.block_size = config.block_size
        max_batched = config.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
        max_decode_batch = min(config.max_num_seqs, max_batched)  # the scheduler's cap on running sequences
        self.uses_cuda_graphs = supports_cuda_graphs(model) and not config.enforce_eager
        graph_batch = max_decode_batch if self.uses_cuda_graphs else None

        def reserve() -> int:
            return step_memory_reserve(
                model, block_size=config.block_size, max_prefill_tokens=max_batched, max_model_len=self.max_model_len,
                max_sampled_rows=max_decode_batch, graph_batch_size=graph_batch,
                graph_blocks_per_seq=graph_blocks_per_seq(self.max_model_len, config.block_size),
            )

        self.num_kv_blocks = _num_kv_blocks(config, self.model_config, model.dtype, model.device, reserve)
        self.block_manager = BlockManager(
            self.num_kv_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=max_batched
        )
        self.sampler = Sampler(model.backend, self.eos_token_ids, num_text_tokens=tokenizer.vocab_size)
        self.runner = ModelRunner(
            model, self.sampler, num_blocks=self.num_kv_blocks, block_size=config.block_size,
            cuda_graph_max_batch=graph_batch, max_model_len=self.max_model_len,
        )
        self._detokenizers: dict[int, IncrementalDetokenizer] = {}
        self._next_seq_id = 0

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        """Resolve device, dtype and backend, load the model and its tokenizer, build the engine."""
        # Imported here: the engine core needs neither the loaders nor the C++ tokenizer.
        from fastllm.model import load_model

        path = os.fspath(config.model) if config.model is not None else default_model_path()
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        backend = get_backend(resolve_backend(config.backend, device))
        model, _ = load_model(path, dtype=dtype, device=device, backend=backend)
        return cls(model, load_tokenizer(path), config, add_bos_token=_adds_bos_token(path))

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = {self.tokenizer.eos_id, self.model_config.eos_token_id}
        return tuple(sorted(i for i in ids if i is not None and 0 <= i < self.model_config.vocab_size))

    # -- requests -----------------------------------------------------------------------------

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        """Validate and queue one request; raises ValueError if it can never run."""
        seq = self.make_sequence(prompt_token_ids, params)
        self.add_sequence(seq)
        return seq

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a text prompt: special tokens written in it are recognized; BOS first if the model wants it."""
        ids = self.tokenizer.encode(text, allow_special=True)
        return [self.tokenizer.bos_id, *ids] if self.add_bos_token else ids

    def make_sequence(self, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        """Validate a request and build its Sequence, without queueing it."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        prompt = self._check_prompt_ids(prompt_token_ids)
        for token in params.stop_token_ids:
            if token >= self.vocab_size:
                raise ValueError(f"stop_token_ids contains {token}, outside the vocabulary [0, {self.vocab_size})")
        if params.logprobs is not None and params.logprobs > self.vocab_size:
            raise ValueError(f"logprobs ({params.logprobs}) must be <= the vocabulary size ({self.vocab_size})")
        seq = Sequence(self._next_seq_id, prompt, params, self._max_tokens(len(prompt), params))
        self._next_seq_id += 1
        return seq

    def add_sequence(self, seq: Sequence) -> None:
        """Queue a Sequence built by make_sequence."""
        params = seq.params
        self._detokenizers[seq.seq_id] = IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens)
        self.scheduler.add(seq)

    def _check_prompt_ids(self, prompt_token_ids: object) -> list[int]:
        if isinstance(prompt_token_ids, torch.Tensor):
            prompt_token_ids = prompt_token_ids.tolist()
        if not isinstance(prompt_token_ids, (list, tuple)):
            raise TypeError(f"prompt token ids must be a list of ints, got {type(prompt_token_ids).__name__}")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty: give at least one token")
        for token in prompt_token_ids:
            if not isinstance(token, int) or isinstance(token, bool):
                raise ValueError(f"prompt token id {token!r} is not an int")
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"prompt token id {token!r} is outside the vocabulary [0, {self.vocab_size})")
        return list(prompt_token_ids)

    def _max_tokens(self, prompt_len: int, params: SamplingParams) -> int:
        """The request's generation limit, checked against the context length and the KV pool."""
        # The last generated token is never fed back, so the KV cache holds at most prompt + max_tokens - 1.
        pool_tokens = self.num_kv_blocks * self.block_size
        capacity = min(self.max_model_len, pool_tokens + 1)
        if prompt_len >= capacity:
            limit = "max_model_len" if capacity == self.max_model_len else "the KV cache (num_kv_blocks * block_size)"
            raise ValueError(
                f"the prompt has {prompt_len} tokens, but {limit} allows at most {capacity - 1} "
                f"prompt tokens (plus one generated)"
            )
        if params.max_tokens is None:
            return capacity - prompt_len
        total = prompt_len + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds "
                f"max_model_len ({self.max_model_len})"
            )
        if total - 1 > pool_tokens:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) needs "
                f"{self.block_manager.blocks_for(total - 1)} KV blocks but the pool has {self.num_kv_blocks}; "
                f"raise num_kv_blocks or lower max_tokens"
            )
        return params.max_tokens

    def abort(self, seq: Sequence) -> None:
        """Drop a request: stop it and free its KV blocks if unfinished; forget its text state either way."""
        if not seq.is_finished:
            self.scheduler.finish(seq)
            seq.finish_reason = "abort"
        self._detokenizers.pop(seq.seq_id, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- stepping -----------------------------------------------------------------------------

    def step(self) -> StepOutput:
        """Run one model step; returns the sequences that received a token (finished ones included)."""
        batch = self.scheduler.schedule()
        if batch is None:
            if self.scheduler.has_unfinished():
                # Unreachable by construction (admission checks + preemption); fail loudly, never spin.
                raise RuntimeError(f"scheduler made no progress with {len(self.scheduler.waiting)} waiting requests")
            return StepOutput([], is_prefill=False, num_tokens=0)
        output = self.runner.run(batch)
        self.scheduler.update_after_step(batch)
        sampled = batch.sampled_seqs
        now = time.perf_counter()
        for seq, token, logprobs in zip(sampled, output.token_ids, output.logprobs):
            seq.append_token(token)
            if seq.metrics.first_token_time is None:
                seq.metrics.first_token_time = now
            if logprobs is not None:
                seq.logprobs.append(logprobs)
            self._check_stop(seq, token)
            if seq.finish_reason is not None:
                self._detokenizers[seq.seq_id].flush()
                self.scheduler.finish(seq)
                seq.metrics.finished_time = now
        return StepOutput(sampled, is_prefill=batch.is_prefill, num_tokens=batch.num_tokens)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        params = seq.params
        may_stop = seq.num_output_tokens >= params.min_tokens
        if may_stop and ((token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids):
            # The stop token stays in token_ids but not in the text (as in vLLM).
            seq.finish_reason = "stop"
            seq.stop_reason = token if token in params.stop_token_ids else None
            return
        detokenizer = self._detokenizers[seq.seq_id]
        detokenizer.add(token, check_stop=may_stop)
        if detokenizer.stopped_by is not None:
            seq.finish_reason = "stop"
            seq.stop_reason = detokenizer.stopped_by
        elif seq.num_output_tokens >= seq.max_tokens:
            seq.finish_reason = "length"

    def detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        return self._detokenizers[seq.seq_id]

    def release(self, seq: Sequence) -> str:
        """Forget a finished sequence's text state; returns its final text."""
        return self._detokenizers.pop(seq.seq_id).text
