"""Tokenizer throughput: fastllm vs tiktoken vs HF tokenizers, same vocabulary, same text.

All three encode the default model's vocabulary (SmolLM2, 49152 tokens) on ~3.6 MB of mixed text
(benchmarks/tokenizer_corpus.py), one document per call. tiktoken is built offline from the same
token bytes, with a pattern that reproduces SmolLM2's split (Digits, then the GPT-2 regex); HF
is the exact reference of the tests. Reported: MB/s of UTF-8 input, single thread (a loop of
encode calls) and batch (each library's parallel batch API, all cores).

    make bench                                         # with the other suites (pytest-benchmark)
    python -m pytest benchmarks/bench_tokenizer.py     # this suite alone (from the repository root)
    python -m benchmarks.bench_tokenizer               # side-by-side table, best of 5 rounds
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest

from benchmarks.tokenizer_corpus import build_corpus
from fastllm import Tokenizer, default_model_path

TIKTOKEN_SMOLLM_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
)
LIBRARIES = ("fastllm", "tiktoken", "hf")


@dataclass(frozen=True)
class Encoder:
    single: Callable[[str], list[int]]
    batch: Callable[[list[str]], list[list[int]]]


@cache
def corpus() -> tuple[list[str], float]:
    docs = build_corpus()
    return docs, sum(len(d.encode()) for d in docs) / 1e6


@cache
def encoders() -> dict[str, Encoder]:
    import tiktoken

    from tests.tokenizer_reference import hf_reference  # the exact reference of the tests

    ours = Tokenizer.from_gguf(default_model_path())
    specials = [i for i in range(ours.vocab_size) if ours.is_special(i)]
    ranks = {ours.decode_bytes([i]): i for i in range(ours.vocab_size) if not ours.is_special(i)}
    tik = tiktoken.Encoding(
        "smollm2",
        pat_str=TIKTOKEN_SMOLLM_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ours.id_to_token(i): i for i in specials},
    )
    hf = hf_reference("smollm")
    threads = os.cpu_count() or 1
    return {
        "fastllm": Encoder(ours.encode, ours.encode_batch),
        "tiktoken": Encoder(
            lambda text: tik.encode(text, allowed_special="all"),
            lambda texts: tik.encode_batch(texts, num_threads=threads, allowed_special="all"),
        ),
        "hf": Encoder(
            lambda text: hf.encode(text, add_special_tokens=False).ids,
            lambda texts: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
        ),
    }


def _run(library: str, mode: str, docs: list[str]) -> Callable[[], object]:
    encoder = encoders()[library]
    if mode == "single":
        return lambda: [encoder.single(d) for d in docs]
    return lambda: encoder.batch(docs)


@pytest.mark.parametrize("mode", ["single", "batch"])
@pytest.mark.parametrize("library", LIBRARIES)
def test_encode_throughput(benchmark, library: str, mode: str) -> None:
    _, megabytes = corpus()
    benchmark.group = f"tokenizer encode ({mode})"
    benchmark.extra_info["corpus_megabytes"] = round(megabytes, 3)
    benchmark.pedantic(_run(library, mode, corpus()[0]), rounds=3, warmup_rounds=1)
    benchmark.extra_info["megabytes_per_second"] = round(megabytes / benchmark.stats.stats.min, 2)


def side_by_side(rounds: int = 5, docs: list[str] | None = None) -> dict[tuple[str, str], float]:
    """MB/s on `docs` (default: the corpus), best of `rounds` with the libraries interleaved so
    that load drifts hit all alike."""
    docs = corpus()[0] if docs is None else docs
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    best: dict[tuple[str, str], float] = {}
    runs = {(library, mode): _run(library, mode, docs) for mode in ("single", "batch") for library in LIBRARIES}
    for run in runs.values():
        run()  # warm up
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = max(best.get(key, 0.0), megabytes / (time.perf_counter() - start))
    return best


def main() -> None:
    docs, megabytes = corpus()
    print(f"corpus: {len(docs)} documents, {megabytes:.2f} MB; {os.cpu_count()} CPUs")
    best = side_by_side()
    print(f"{'':10s} {'single MB/s':>12s} {'batch MB/s':>12s} {'single vs fastllm':>18s}")
    for library in LIBRARIES:
        single, batch = best[(library, "single")], best[(library, "batch")]
        print(f"{library:10s} {single:12.1f} {batch:12.1f} {best[('fastllm', 'single')] / single:17.2f}x")


if __name__ == "__main__":
    main()
