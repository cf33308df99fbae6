"""The serving engine: requests in, outputs out.

    config           EngineConfig: every engine option, documented once
    placement        device and dtype resolution
    sampling_params  SamplingParams (validated per request)
    processor        InputProcessor: prompts encoded and checked into Requests
    request          Request: one prompt and its samples
    sequence         Sequence: one sample's tokens, KV blocks, text and progress
    outputs          RequestOutput / CompletionOutput / RequestMetrics: what step() returns; EngineStats
    block_manager    paged KV-cache bookkeeping, prefix caching
    scheduler        continuous batching, chunked prefill with decode first, preemption
    memory           the KV pool's size
    model_runner     KV cache tensor, step inputs, forward, logits
    sampler          penalties, seeds, logprobs; the draw through the backend
    detokenizer      incremental, UTF-8-safe output text and stop strings
    chat_template    the model's jinja2 chat template
    llm_engine       LLMEngine: add_request, step, abort, stats
    async_llm        AsyncLLM: the engine stepped by a background thread, per-request asyncio streams

The public API on top is `fastllm.LLM` / `fastllm.generate` (fastllm/api.py) and `fastllm.AsyncLLM`;
`fastllm serve` (fastllm/entrypoints/openai/) serves AsyncLLM over HTTP.
"""
