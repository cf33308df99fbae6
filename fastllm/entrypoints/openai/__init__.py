"""The OpenAI-compatible server (`fastllm serve`):

    args        the command's options (no server dependencies)
    protocol    request bodies (pydantic) and their SamplingParams
    errors      OpenAI's error shape and status codes
    formatting  engine outputs as OpenAI responses, stream chunks, usage, logprobs
    serving     completions / chat completions: streams in, responses out, disconnects aborted
    metrics     Prometheus metrics
    api_server  the FastAPI app and the command (uvicorn, signals)
"""
