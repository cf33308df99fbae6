"""`fastllm.loader.load`: one pass over a GGUF file or an HF folder gives the config, the weights,
the tokenizer and the prompt format (add-BOS, every end-of-generation id, the chat template), and
the engine ends generation on every one of those ids."""

from __future__ import annotations

import json

import pytest

from fastllm import LLM, SamplingParams
from fastllm.loader import CheckpointError, PromptFormat, load
from llama_testing import save_tiny_llama
from model_files_testing import BOS, EOS, write_llama_gguf, write_tokenizer_json

GREEDY = SamplingParams(temperature=0, max_tokens=16)


def test_default_model_files():
    files = load()
    assert files.config.vocab_size == files.tokenizer.vocab_size == 49152
    assert files.checkpoint.format == "gguf" and "model.embed_tokens.weight" in files.checkpoint.weights
    prompt_format = files.prompt_format
    assert (prompt_format.add_bos_token, prompt_format.eos_token_ids) == (False, (2,))  # <|im_end|>
    assert "<|im_start|>" in prompt_format.chat_template


def test_gguf_declares_every_end_of_generation_id(tmp_path):
    path = write_llama_gguf(tmp_path / "llama3.gguf", add_bos_token=True, eot_token_id=7, eom_token_id=9)
    files = load(path)
    assert files.prompt_format == PromptFormat(add_bos_token=True, eos_token_ids=(EOS, 7, 9), chat_template=None)
    assert files.tokenizer.bos_id == BOS and files.config.vocab_size == 40


def test_the_gguf_header_is_parsed_once(tmp_path, monkeypatch):
    from fastllm.loader.gguf_file import GGUFFile

    path = write_llama_gguf(tmp_path / "tiny.gguf")
    opened = []
    original = GGUFFile.__init__
    monkeypatch.setattr(GGUFFile, "__init__", lambda self, p: opened.append(str(p)) or original(self, p))
    LLM(path, num_kv_blocks=8, block_size=4)
    assert opened == [path]


def test_hf_folder_eos_lists_post_processor_bos_and_template_file(tmp_path):
    save_tiny_llama(tmp_path, vocab_size=64, bos_token_id=BOS, eos_token_id=[EOS, 50])
    write_tokenizer_json(tmp_path, 64, bos_in_post_processor=True)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, 60, 61]}))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    files = load(tmp_path)
    assert files.checkpoint.format == "hf" and files.tokenizer.vocab_size == 64
    assert files.prompt_format == PromptFormat(
        add_bos_token=True, eos_token_ids=(EOS, 50, 60, 61),
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    llm = LLM(tmp_path, num_kv_blocks=16, block_size=4)
    assert llm.engine.eos_token_ids == (EOS, 50, 60, 61)
    assert llm.engine.processor.encode("$%") == [BOS, 3, 4]  # BOS first, as the post-processor says
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    assert not load(tmp_path).prompt_format.add_bos_token  # tokenizer_config.json has the last word


def test_hf_folder_without_a_tokenizer_is_refused(tmp_path):
    save_tiny_llama(tmp_path)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="model path does not exist"):
        load(tmp_path / "missing.gguf")


def _first_occurrences(tokens: list[int]) -> list[int]:
    """Positions where a token not seen before appears (EOS excluded)."""
    seen: set[int] = set()
    positions = []
    for index, token in enumerate(tokens):
        if token not in seen and token != EOS:
            positions.append(index)
        seen.add(token)
    return positions


@pytest.mark.parametrize("key", ["eot_token_id", "eom_token_id"])
def test_llama3_style_model_stops_on_either_end_of_turn_id(tmp_path, key):
    """Like Llama 3 (<|eot_id|>, <|eom_id|> beside <|end_of_text|>): any declared id ends generation."""
    prompt = [5, 6, 7]
    free = write_llama_gguf(tmp_path / "free.gguf")
    tokens = LLM(free, num_kv_blocks=64, block_size=4).generate(
        [prompt], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False
    )[0].token_ids
    positions = [p for p in _first_occurrences(tokens) if p >= 2]
    assert len(positions) >= 2, f"the model's greedy tokens {tokens} have too few distinct tokens for this test"
    # The same weights, declaring a token the model generates as end of turn (and an unused one for the other key).
    stop_at = positions[0] if key == "eot_token_id" else positions[1]
    other = "eom_token_id" if key == "eot_token_id" else "eot_token_id"
    unused = next(t for t in range(3, 40) if t not in tokens)
    path = write_llama_gguf(tmp_path / "llama3.gguf", **{key: tokens[stop_at], other: unused})
    out = LLM(path, num_kv_blocks=64, block_size=4).generate([prompt], GREEDY, use_tqdm=False)[0]
    assert out.token_ids == tokens[: stop_at + 1]
    assert out.finish_reason == "stop" and out.stop_reason is None
