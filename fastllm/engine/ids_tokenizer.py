"""A stand-in tokenizer for models that come without one: token ids in, token ids out, no text.

`LLM.from_model(model)` uses it for a model built in memory (random weights for benchmarks, a
checkpoint loaded by other means): prompts must then be token ids, and outputs carry token ids
with empty text. EOS and BOS come from the model's config.
"""

from __future__ import annotations

from fastllm.model.config import ModelConfig


class _SilentDecoder:
    def step(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class TokenIdsTokenizer:
    """Duck-types the parts of `fastllm.Tokenizer` the engine uses; decodes every token to ""."""

    chat_template = None
    bos_token = eos_token = None

    def __init__(self, config: ModelConfig) -> None:
        self.vocab_size = config.vocab_size
        self.bos_id = config.bos_token_id
        self.eos_id = config.eos_token_id

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        raise ValueError("this LLM has no tokenizer (built with LLM.from_model): give prompts as lists of token ids")

    def stream_decoder(self, *, skip_special_tokens: bool = False) -> _SilentDecoder:
        return _SilentDecoder()
