"""Tensor parallelism on the CPU (gloo): the same greedy tokens as one rank, log-probabilities within
float32 rounding, through chunked prefill, prefix-cache hits and preemption; each rank holding its
part of the weights; a killed rank named in an error within seconds, no process left behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from gguf import GGMLQuantizationType as Q

from benchmarks import make_gguf
from fastllm import LLM, SamplingParams
from fastllm.distributed.workers import free_port
from llama_testing import save_tiny_llama
from model_files_testing import write_tokenizer_json

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=3)
# Log-probabilities of the default model on 3 ranks against 1, over 150 random prompts x 8 tokens:
# at most 2.1e-4 apart (the o and down projections add their partial sums in another order).
LOGPROB_ATOL = 2e-3


def random_prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randrange(1, 70))] for _ in range(count)]


def assert_same_generation(reference, outputs) -> None:
    for ref, out in zip(reference, outputs, strict=True):
        assert out.token_ids == ref.token_ids
        for ref_step, step in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs, strict=True):
            for token in ref_step.keys() & step.keys():
                assert abs(ref_step[token] - step[token]) <= LOGPROB_ATOL


def weight_bytes(llm: LLM) -> int:
    model = llm.engine.model
    linears = [model.lm_head] + [m for layer in model.layers for m in
                                 (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                                  layer.mlp.down_proj)]
    tied = model.config.tie_word_embeddings
    return sum(linear.nbytes for linear in linears) + (0 if tied else model.embed_tokens.nbytes)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp")
    # 4 query / 2 KV heads of 64, 256 features, 320 tokens: split over 2 ranks. Q4_K's 256-value
    # blocks do not split the o / down columns (128 per rank): those parts are decoded at load.
    config = make_gguf.tiny_config(num_hidden_layers=2, tie_word_embeddings=False)
    return {qtype: make_gguf.write_random_gguf(folder / f"{qtype.name}.gguf", config, {"*": qtype}, seed=7)
            for qtype in (Q.Q8_0, Q.Q4_K)}


def test_default_model_on_three_ranks_generates_what_one_rank_does():
    prompts = random_prompts(12, 49152, seed=1) + ["The capital of France is", "def fibonacci(n):"]
    one = LLM()
    reference = one.generate(prompts, GREEDY, use_tqdm=False)
    alone = one.generate(prompts[:1], GREEDY, use_tqdm=False)
    three = LLM(tensor_parallel_size=3)
    try:
        assert_same_generation(reference, three.generate(prompts, GREEDY, use_tqdm=False))
        assert_same_generation(alone, three.generate(prompts[:1], GREEDY, use_tqdm=False))
        # Each rank: 3 of the 9 query heads, 1 of the 3 KV heads, a third of the MLP and vocabulary.
        assert weight_bytes(three) == pytest.approx(weight_bytes(one) / 3, rel=0.01)
        assert three.engine.model.config.num_key_value_heads == 1
    finally:
        three.close()
    assert all(not p.is_alive() for p in three.engine.ranks.workers.processes.values())


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K], ids=lambda q: q.name)
def test_tiny_model_on_two_ranks_through_chunks_prefix_hits_and_preemption(tiny_files, qtype):
    path = tiny_files[qtype]
    prompts = random_prompts(10, 320, seed=2)
    prompts += [prompts[0] + [5, 6, 7], prompts[1]]  # prefix-cache hits
    # 12 blocks of 16 tokens for 12 sequences of up to 94 tokens: some are preempted and recomputed;
    # a 32-token step budget prefills the longer prompts in chunks.
    options = {"num_kv_blocks": 12, "max_num_batched_tokens": 32}
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3)
    reference = LLM(path, **options).generate(prompts, params, use_tqdm=False)
    two = LLM(path, tensor_parallel_size=2, **options)
    try:
        assert_same_generation(reference, two.generate(prompts, params, use_tqdm=False))
        assert two.engine.scheduler.num_preemptions > 0
    finally:
        two.close()


def test_hf_folder_on_two_ranks_with_a_vocabulary_that_does_not_split_evenly(tmp_path):
    # 6 query / 2 KV heads, 97 tokens: rank 0 holds 49 embedding rows, rank 1 48 and a padding row.
    save_tiny_llama(tmp_path, vocab_size=97)
    write_tokenizer_json(tmp_path, 97)
    prompts = random_prompts(6, 97, seed=3)
    reference = LLM(tmp_path, num_kv_blocks=64).generate(prompts, GREEDY, use_tqdm=False)
    two = LLM(tmp_path, tensor_parallel_size=2, num_kv_blocks=64)
    try:
        assert_same_generation(reference, two.generate(prompts, GREEDY, use_tqdm=False))
    finally:
        two.close()


def test_ranks_started_by_a_torchrun_style_launcher(tiny_files, monkeypatch):
    path = tiny_files[Q.Q8_0]
    prompts = random_prompts(4, 320, seed=4)
    reference = LLM(path, num_kv_blocks=32).generate(prompts, GREEDY, use_tqdm=False)
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    worker = subprocess.Popen(
        [sys.executable, "-m", "fastllm.distributed.worker", str(path), "--tensor-parallel-size", "2",
         "--num-kv-blocks", "32"],
        env={**os.environ, **launch, "RANK": "1", "LOCAL_RANK": "1"},
    )
    try:
        for name, value in {**launch, "RANK": "0", "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(name, value)
        llm = LLM(path, tensor_parallel_size=2, num_kv_blocks=32)
        assert llm.engine.ranks.workers is None  # nothing spawned: the launcher started rank 1
        try:
            assert_same_generation(reference, llm.generate(prompts, GREEDY, use_tqdm=False))
        finally:
            llm.close()
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
        worker.wait()


def test_a_killed_rank_fails_the_step_within_seconds_and_leaves_no_process(tiny_files):
    llm = LLM(tiny_files[Q.Q8_0], tensor_parallel_size=2)
    workers = llm.engine.ranks.workers
    try:
        llm.engine.add_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
        llm.engine.step()
        os.kill(workers.processes[1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="rank 1 exited with code -9, killed by SIGKILL"):
            while llm.engine.has_unfinished_requests():
                llm.engine.step()
        assert time.monotonic() - start < 10
    finally:
        llm.close()
    assert all(not p.is_alive() for p in workers.processes.values())


def test_sizes_the_model_cannot_split_over_are_refused_before_any_process_starts(tiny_files):
    with pytest.raises(ValueError, match=r"tensor_parallel_size \(2\) must divide the model's query heads \(9\)"):
        LLM(tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"tensor_parallel_size \(3\) must divide the model's query heads \(4\)"):
        LLM(tiny_files[Q.Q8_0], tensor_parallel_size=3)
    with pytest.raises(ValueError, match="tensor_parallel_size must be an int >= 1"):
        LLM(tensor_parallel_size=0)
