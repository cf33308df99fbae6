"""CUDA-graph decode: the capture ladder, padding and static buffers (on the CPU, replaying nothing:
the same padded forward runs eagerly), the engine hooks, and capture itself where CUDA is usable."""

from __future__ import annotations

import os

import pytest
import torch

from fastllm import LLM, SamplingParams
from fastllm.engine.cuda_graphs import (
    MAX_GRAPH_CONTEXT,
    DecodeGraphs,
    DecodeInputs,
    capture_batch_sizes,
    graph_blocks_per_seq,
    padded_batch_size,
    supports_cuda_graphs,
)
from fastllm.engine.config import EngineConfig
from fastllm.model import AttentionMetadata
from tests.engine_testing import TINY_VOCAB, generate, random_prompts, tiny_engine, tiny_model

CUDA_USABLE = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
NEEDS_CUDA = pytest.mark.skipif(
    not CUDA_USABLE,
    reason="needs a CUDA GPU with compiled Triton kernels (run with TRITON_INTERPRET=0 on a GPU machine)",
)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


# -- ladder and padding --------------------------------------------------------------------------


def test_ladder_doubles_to_8_then_steps_by_8_to_64_then_by_16() -> None:
    assert capture_batch_sizes(1) == [1]
    assert capture_batch_sizes(3) == [1, 2, 3]
    assert capture_batch_sizes(8) == [1, 2, 4, 8]
    assert capture_batch_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert capture_batch_sizes(100) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100]
    assert capture_batch_sizes(256)[-4:] == [208, 224, 240, 256]


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, None])
def test_ladder_rejects_bad_sizes(bad) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        capture_batch_sizes(bad)


def test_batches_pad_up_to_the_next_captured_size() -> None:
    sizes = capture_batch_sizes(100)
    assert [padded_batch_size(n, sizes) for n in (1, 2, 3, 5, 8, 9, 17, 64, 65, 81, 97, 100)] == [
        1, 2, 4, 8, 8, 16, 24, 64, 80, 96, 100, 100,
    ]
    for bad in (0, 101):
        with pytest.raises(ValueError, match=r"\[1, 100\]"):
            padded_batch_size(bad, sizes)


def test_graph_block_tables_cover_the_context_up_to_the_cap() -> None:
    assert graph_blocks_per_seq(2048, 16) == 128
    assert graph_blocks_per_seq(2049, 16) == 129
    assert graph_blocks_per_seq(131072, 16) == MAX_GRAPH_CONTEXT // 16
    assert graph_blocks_per_seq(2048, 16, num_kv_blocks=50) == 50


# -- static inputs -------------------------------------------------------------------------------


def test_inputs_hold_the_batch_then_padding_rows() -> None:
    inputs = DecodeInputs(max_batch_size=6, max_blocks_per_seq=3, block_size=4, device=torch.device("cpu"))
    # Sequences with 9, 4 and 1 tokens: last positions 8, 3, 0.
    inputs.fill([11, 12, 13], [8, 3, 0], [[5, 2, 7], [4], [9]], size=4)
    assert inputs.input_ids[:4].tolist() == [11, 12, 13, 0]
    assert inputs.positions[:4].tolist() == [8, 3, 0, 0]
    assert inputs.slot_mapping[:4].tolist() == [7 * 4 + 0, 4 * 4 + 3, 9 * 4 + 0, -1]
    assert inputs.context_lens[:4].tolist() == [9, 4, 1, 1]
    assert inputs.block_tables[:3, 0].tolist() == [5, 4, 9] and inputs.block_tables[3, 0] == 0
    assert inputs.block_tables[0].tolist() == [5, 2, 7]

    # A smaller batch later: the rows it leaves become padding again (no stale slot writes).
    inputs.fill([21], [5], [[3, 1]], size=2)
    assert inputs.slot_mapping[:2].tolist() == [1 * 4 + 1, -1]
    assert inputs.context_lens[:2].tolist() == [6, 1]
    meta = inputs.metadata(2)
    assert not meta.is_prefill and meta.block_tables.shape == (2, 3) and meta.slot_mapping.shape == (2,)


def test_inputs_reject_batches_they_cannot_hold() -> None:
    inputs = DecodeInputs(max_batch_size=4, max_blocks_per_seq=2, block_size=4, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="size"):
        inputs.fill([1, 2, 3], [0, 0, 0], [[0], [1], [2]], size=2)
    with pytest.raises(ValueError, match="3 blocks"):
        inputs.fill([1], [9], [[0, 1, 2]], size=1)


# -- padded decode against the eager step ---------------------------------------------------------


@torch.inference_mode()
def test_padded_decode_matches_eager_and_padding_writes_nothing(model) -> None:
    config = model.config
    block_size, num_blocks = 4, 12
    generator = torch.Generator().manual_seed(0)
    cache = torch.randn(
        config.num_hidden_layers, 2, num_blocks, block_size, config.num_key_value_heads, config.head_dim,
        generator=generator,
    )
    tables = [[3, 8], [5], [1, 0, 10]]
    positions = [6, 2, 9]
    tokens = [7, 30, 99]
    eager_cache = cache.clone()
    slots = [tables[i][p // block_size] * block_size + p % block_size for i, p in enumerate(positions)]
    width = max(map(len, tables))
    meta = AttentionMetadata(
        is_prefill=False, slot_mapping=torch.tensor(slots), context_lens=torch.tensor([p + 1 for p in positions],
                                                                                      dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
    )
    expected = model(torch.tensor(tokens), torch.tensor(positions), meta, eager_cache)

    graphs = DecodeGraphs(model, cache, max_batch_size=6, max_blocks_per_seq=4, block_size=block_size)
    assert graphs.captured_sizes == [] and graphs.fits(tables) and not graphs.fits([[0] * 5])
    hidden = graphs.run(tokens, positions, tables)  # padded to 4 rows
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    # The padding row wrote nothing: the caches agree everywhere (the real rows wrote the same slots).
    torch.testing.assert_close(cache, eager_cache, rtol=1e-5, atol=1e-5)


def test_engine_with_padded_static_decode_matches_eager(model) -> None:
    """The whole engine, decode steps through DecodeGraphs (uncaptured on the CPU), greedy tokens unchanged;
    sequences whose block table outgrows the graphs fall back to eager steps."""
    prompts = random_prompts([3, 9, 5, 2, 7, 11, 4], seed=5)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (18, 6, 12, 9, 15, 7, 11)]

    def run(with_graphs: bool) -> tuple[list[list[int]], list[int], int]:
        engine = tiny_engine(model, max_num_seqs=5)
        runner = engine.runner
        batch_sizes: list[int] = []
        eager_decode_steps = 0
        if with_graphs:
            # 5 blocks of 4 tokens: the longest requests (up to 22 tokens) outgrow them.
            graphs = DecodeGraphs(model, runner.kv_cache, max_batch_size=5, max_blocks_per_seq=5, block_size=4)
            replay, prepare = graphs.run, runner._prepare

            def counted_prepare(batch):
                nonlocal eager_decode_steps
                eager_decode_steps += batch.is_decode_only
                return prepare(batch)

            graphs.run = lambda ids, *rest: batch_sizes.append(len(ids)) or replay(ids, *rest)
            runner._prepare = counted_prepare
            runner.decode_graphs = graphs
        return [o.token_ids for o in generate(engine, prompts, params)], batch_sizes, eager_decode_steps

    expected, _, _ = run(False)
    tokens, batch_sizes, eager_decode_steps = run(True)
    assert tokens == expected
    assert {5, 3} <= set(batch_sizes)  # full and padded (3 -> 4) batches went through the static buffers
    assert eager_decode_steps > 0  # and batches holding a too-long sequence ran eagerly


# -- engine and API hooks ------------------------------------------------------------------------


def test_cpu_engines_run_eagerly(model) -> None:
    assert not supports_cuda_graphs(model)
    engine = tiny_engine(model)
    assert not engine.uses_cuda_graphs and engine.runner.decode_graphs is None
    with pytest.raises(ValueError, match="CUDA device"):
        DecodeGraphs(model, engine.runner.kv_cache, max_batch_size=2, max_blocks_per_seq=2, block_size=4).capture()


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_enforce_eager_must_be_a_bool(bad) -> None:
    with pytest.raises(ValueError, match="enforce_eager"):
        EngineConfig(enforce_eager=bad)


def test_llm_from_model_takes_token_ids_and_returns_token_ids(model) -> None:
    llm = LLM.from_model(model, num_kv_blocks=32, block_size=4, max_num_seqs=4)
    outputs = llm.generate([[5, 6, 7], [8, 9]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                           use_tqdm=False)
    assert [len(o.token_ids) for o in outputs] == [4, 4] and all(o.text == "" for o in outputs)
    assert all(0 <= t < TINY_VOCAB for o in outputs for t in o.token_ids)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate("some text", use_tqdm=False)


def test_llm_from_model_rejects_what_the_model_fixes(model) -> None:
    with pytest.raises(TypeError, match="device"):
        LLM.from_model(model, device="cpu")
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        LLM.from_model("not a model")


def test_per_step_integers_do_not_specialize_the_attention_kernels() -> None:
    """Triton compiles a variant per value class (1, multiple of 16, other) of an int argument:
    arguments that follow the step's batch or block-table width must opt out."""
    from fastllm.kernels.attention import _varlen_attention_kernel
    from fastllm.kernels.decode_attention import _merge_splits_kernel, _paged_decode_kernel

    def unspecialized(kernel) -> set[str]:
        if hasattr(kernel, "params"):  # a JITFunction (compiled kernels)
            return {p.name for p in kernel.params if p.do_not_specialize}
        return set(kernel.kwargs["do_not_specialize"])  # an InterpretedFunction (TRITON_INTERPRET=1)

    assert {"kv_capacity", "stride_block_table"} <= unspecialized(_varlen_attention_kernel)
    assert {"kv_capacity", "tokens_per_split", "stride_block_table"} <= unspecialized(_paged_decode_kernel)
    assert "num_splits" in unspecialized(_merge_splits_kernel)


# -- CUDA only -----------------------------------------------------------------------------------


@NEEDS_CUDA
def test_captured_graphs_replay_the_eager_decode() -> None:
    from fastllm.model import LlamaForCausalLM, get_backend
    from fastllm.model.weights import llama_weight_shapes

    config = tiny_model().config
    generator = torch.Generator().manual_seed(4)
    weights = {name: 0.5 * torch.randn(shape, generator=generator) for name, shape in llama_weight_shapes(config).items()}
    cuda_model = LlamaForCausalLM(config, get_backend("triton"), device="cuda")
    cuda_model.load_weights(weights)
    assert supports_cuda_graphs(cuda_model)
    prompts = random_prompts([3, 9, 5, 2, 7], seed=6)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (12, 5, 9, 7, 11)]

    def generate(**options) -> list[list[int]]:
        llm = LLM.from_model(cuda_model, block_size=4, max_num_seqs=5, **options)
        assert llm.engine.uses_cuda_graphs is not options.get("enforce_eager", False)
        if llm.engine.uses_cuda_graphs:
            assert llm.engine.runner.decode_graphs.captured_sizes == [1, 2, 4, 5]
        return [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    expected = generate(num_kv_blocks=64, enforce_eager=True)
    assert generate(num_kv_blocks=64) == expected
    # Sized from memory: the dummy prefill and decode steps measure what to hold back.
    assert generate(gpu_memory_utilization=0.001) == expected


# -- KV pool sizing --------------------------------------------------------------------------------


@torch.inference_mode()
def test_memory_probe_steps_run_and_write_no_real_kv(model) -> None:
    """The dummy steps whose peak memory is held back from the KV pool (measured on CUDA only)."""
    from fastllm.engine.memory import dummy_decode, dummy_prefill

    config = model.config
    cache = torch.zeros(config.num_hidden_layers, 2, 1, 4, config.num_key_value_heads, config.head_dim)
    # 70 tokens in sequences of at most 32: 32 + 32 + 6.
    dummy_prefill(model, cache, max_prefill_tokens=70, max_model_len=32, max_sampled_rows=5)()
    assert not cache.any()  # slots -1: nothing written
    graphs = DecodeGraphs(model, cache, max_batch_size=6, max_blocks_per_seq=8, block_size=4)
    dummy_decode(graphs)()
    assert graphs.hidden.isfinite().all()
