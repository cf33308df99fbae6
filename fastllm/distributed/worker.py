"""A rank > 0 of a tensor-parallel engine started by an external launcher (torchrun, a cluster's).

    torchrun --nnodes 2 --nproc-per-node 4 ... -m fastllm.distributed.worker MODEL --tensor-parallel-size 8 [--OPTION VALUE ...]

Rank 0 runs the engine itself (`LLM(MODEL, tensor_parallel_size=8, ...)`, or `fastllm serve`) in a
process with RANK=0 of the same launch; every other rank runs this with the same model and engine
options, joins the group through the launcher's MASTER_ADDR / MASTER_PORT, loads its part of the
model and runs rank 0's steps until rank 0 stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from fastllm.engine.config import EngineConfig


def _parse_value(text: str) -> object:
    """An option's value from the command line: None, a bool, an int, a float, else the text."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def engine_config(argv: list[str] | None = None) -> EngineConfig:
    """The EngineConfig the command line describes: MODEL, then --option-name value per field."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the GGUF file or HF folder rank 0 loads")
    hints = typing.get_type_hints(EngineConfig)
    for field in dataclasses.fields(EngineConfig):
        if field.name != "model":
            parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=_parse_value,
                                default=field.default, help=f"{hints[field.name]} (default {field.default!r})")
    return EngineConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    from fastllm.distributed.group import TensorParallelGroup
    from fastllm.distributed.launch import COLLECTIVE_TIMEOUT_S, LOAD_TIMEOUT_S, serve_rank
    from fastllm.engine.placement import Placement

    config = engine_config(argv)
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise SystemExit(f"fastllm.distributed.worker runs under a launcher that sets {', '.join(missing)} (e.g. torchrun)")
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if size != config.tensor_parallel_size or rank == 0:
        raise SystemExit(f"this is rank {rank} of {size}: the worker is every rank but 0 of a launch of "
                         f"--tensor-parallel-size ({config.tensor_parallel_size}) ranks")
    placement = Placement.resolve(config)
    group = TensorParallelGroup.initialize(rank, size, "env://", placement.device, COLLECTIVE_TIMEOUT_S)
    try:
        serve_rank(rank, group, config, placement, lambda: group.barrier(LOAD_TIMEOUT_S))
    finally:
        group.destroy()


if __name__ == "__main__":
    main()
