"""Front ends over the engine: the `fastllm` command (cli) and the OpenAI-compatible server (openai/)."""
