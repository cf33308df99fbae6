"""The serving engine: requests in, tokens out.

    sampling_params  SamplingParams (validated per request)
    sequence         Sequence: one request's tokens, KV blocks and progress
    block_manager    paged KV-cache bookkeeping, prefix caching
    scheduler        continuous batching, chunked prefill, preemption
    model_runner     KV cache tensor, step inputs, forward, logits
    sampler          penalties, seeds, logprobs; the draw through the backend
    detokenizer      incremental, UTF-8-safe output text and stop strings
    chat_template    the model's jinja2 chat template
    llm_engine       LLMEngine: ties them together, one step at a time

The public API on top is `fastllm.LLM` / `fastllm.generate` (fastllm/api.py).
"""
