"""Request: one submitted prompt and its samples (one Sequence per SamplingParams.n), from
`LLMEngine.add_request` until its last output or `abort`.

Samples after the first are queued only once the first has computed the prompt (on its first
token): by then the prompt's full KV blocks sit in the prefix cache, so the others reuse them and
compute only the prompt's last, partial block.
"""

from __future__ import annotations

import dataclasses

from fastllm.engine.outputs import RequestMetrics, RequestOutput
from fastllm.engine.sequence import Sequence


class Request:
    def __init__(self, request_id: str, prompt: str | None, samples: list[Sequence]) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.samples = samples
        self.num_queued = 0  # samples[:num_queued] went to the scheduler; the rest wait for the first

    @property
    def metrics(self) -> RequestMetrics:
        return self.samples[0].metrics

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.samples[0].prompt_token_ids

    @property
    def unqueued(self) -> list[Sequence]:
        return self.samples[self.num_queued :]

    @property
    def is_finished(self) -> bool:
        return all(sample.finish_reason is not None for sample in self.samples)

    def take_output(self) -> RequestOutput:
        """The request's output now, each sample's deltas counted from the previous call."""
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[sample.take_output() for sample in self.samples],
            finished=self.is_finished,
            metrics=dataclasses.replace(self.metrics),  # a copy: the engine goes on updating its own
        )
