"""Tokenizer throughput: fastllm against the other libraries on the same vocabulary and text.

Two vocabularies, each on ~3.6 MB of mixed text (benchmarks/tokenizer_corpus.py), one document
per call; reported: MB/s of UTF-8 input, single thread (a loop of encode calls) and batch (each
library's parallel batch API, all cores).
- byte-level BPE, the default model's (SmolLM2, 49,152 tokens): fastllm, tiktoken (built offline
  from the same token bytes, with a pattern that reproduces SmolLM2's split) and HF tokenizers
  (the exact reference of the tests);
- SentencePiece BPE, Gemma 3's (262,144 tokens, benchmarks/pypi_models.py): fastllm, HF tokenizers
  (what transformers builds from the GGUF) and the `sentencepiece` package (the model rebuilt
  from the GGUF's pieces, scores and types).

    make bench                                         # with the other suites (pytest-benchmark)
    python -m pytest benchmarks/bench_tokenizer.py     # this suite alone (from the repository root)
    python -m benchmarks.bench_tokenizer               # side-by-side tables, best of 5 rounds,
                                                       # and benchmarks/results/tokenizer.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from benchmarks.tokenizer_corpus import build_corpus
from fastllm import Tokenizer, default_model_path

TIKTOKEN_SMOLLM_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
)
LIBRARIES = ("fastllm", "tiktoken", "hf")  # byte-level BPE
SENTENCEPIECE_LIBRARIES = ("fastllm", "sentencepiece", "hf")
RESULTS = Path(__file__).parent / "results" / "tokenizer.json"


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
    """The byte-level BPE suite: SmolLM2's vocabulary."""
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
        "hf": _hf_encoder(hf),
    }


@cache
def sentencepiece_encoders() -> dict[str, Encoder]:
    """The SentencePiece BPE suite: Gemma 3's vocabulary."""
    import sentencepiece

    from benchmarks.pypi_models import gemma3_270m_path
    from fastllm.loader.gguf_file import GGUFFile
    from tests.sentencepiece_testing import hf_tokenizer_from_gguf, sentencepiece_model_from_gguf

    path = gemma3_270m_path()
    ours = Tokenizer.from_gguf(path)
    sp = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model_from_gguf(GGUFFile(path).metadata))
    threads = os.cpu_count() or 1
    return {
        "fastllm": Encoder(ours.encode, ours.encode_batch),
        "sentencepiece": Encoder(sp.encode, lambda texts: sp.encode(texts, num_threads=threads)),
        "hf": _hf_encoder(hf_tokenizer_from_gguf(path)),
    }


SUITES = {"byte-level": (encoders, LIBRARIES), "sentencepiece": (sentencepiece_encoders, SENTENCEPIECE_LIBRARIES)}


def _hf_encoder(hf) -> Encoder:
    return Encoder(
        lambda text: hf.encode(text, add_special_tokens=False).ids,
        lambda texts: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
    )


def _run(library: str, mode: str, docs: list[str], suite: str = "byte-level") -> Callable[[], object]:
    encoder = SUITES[suite][0]()[library]
    if mode == "single":
        return lambda: [encoder.single(d) for d in docs]
    return lambda: encoder.batch(docs)


@pytest.mark.parametrize("mode", ["single", "batch"])
@pytest.mark.parametrize(
    ("suite", "library"), [(suite, library) for suite, (_, libraries) in SUITES.items() for library in libraries]
)
def test_encode_throughput(benchmark, suite: str, library: str, mode: str) -> None:
    _, megabytes = corpus()
    benchmark.group = f"tokenizer encode, {suite} ({mode})"
    benchmark.extra_info["corpus_megabytes"] = round(megabytes, 3)
    benchmark.pedantic(_run(library, mode, corpus()[0], suite), rounds=3, warmup_rounds=1)
    benchmark.extra_info["megabytes_per_second"] = round(megabytes / benchmark.stats.stats.min, 2)


def side_by_side(rounds: int = 5, docs: list[str] | None = None, suite: str = "byte-level") -> dict[tuple[str, str], float]:
    """MB/s on `docs` (default: the corpus), best of `rounds` with the libraries interleaved so
    that load drifts hit all alike."""
    docs = corpus()[0] if docs is None else docs
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    best: dict[tuple[str, str], float] = {}
    libraries = SUITES[suite][1]
    runs = {(library, mode): _run(library, mode, docs, suite) for mode in ("single", "batch") for library in libraries}
    for run in runs.values():
        run()  # warm up
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = max(best.get(key, 0.0), megabytes / (time.perf_counter() - start))
    return best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suites", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args()
    docs, megabytes = corpus()
    print(f"corpus: {len(docs)} documents, {megabytes:.2f} MB; {os.cpu_count()} CPUs ({_cpu_name()})")
    report: dict = {
        "date": datetime.date.today().isoformat(), "cpu": _cpu_name(), "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "corpus_megabytes": round(megabytes, 3), "documents": len(docs), "rounds": args.rounds,
        "versions": {name: importlib.metadata.version(name) for name in ("tokenizers", "tiktoken", "sentencepiece")},
        "megabytes_per_s": {}, "fastllm_single_thread_speedup": {},
    }
    for suite in args.suites:
        best = side_by_side(args.rounds, docs, suite)
        libraries = SUITES[suite][1]
        print(f"\n{suite}\n{'':14s} {'single MB/s':>12s} {'batch MB/s':>12s} {'fastllm single / this':>22s}")
        for library in libraries:
            single, batch = best[(library, "single")], best[(library, "batch")]
            print(f"{library:14s} {single:12.1f} {batch:12.1f} {best[('fastllm', 'single')] / single:21.2f}x")
        report["megabytes_per_s"][suite] = {
            library: {mode: round(best[(library, mode)], 2) for mode in ("single", "batch")} for library in libraries
        }
        report["fastllm_single_thread_speedup"][suite] = {
            library: round(best[("fastllm", "single")] / best[(library, "single")], 2)
            for library in libraries if library != "fastllm"
        }
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other jobs on a shared machine
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
