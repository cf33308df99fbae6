"""PromptFormat: how a model's prompts begin and its replies end, as its file or folder declares.

- add_bos_token: whether a text prompt gets BOS prepended (the tokenizer itself never adds it).
- eos_token_ids: every id that ends a reply. Instruct models often declare several: Llama 3
  ends a turn with <|eot_id|> (GGUF `tokenizer.ggml.eot_token_id`), a tool call with <|eom_id|>
  (`eom_token_id`) and text with <|end_of_text|> (`eos_token_id`); HF folders list them in
  config.json and generation_config.json.
- chat_template: the jinja2 template that renders a conversation (None if there is none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer

GGUF_EOS_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
HF_EOS_FILES = ("config.json", "generation_config.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.49 saves it (no longer in tokenizer_config.json)


@dataclass(frozen=True)
class PromptFormat:
    add_bos_token: bool
    eos_token_ids: tuple[int, ...]
    chat_template: str | None


def _ids(values: Iterable[object]) -> tuple[int, ...]:
    """The ints among `values` (a declared id may be an int, a list of ints, or absent), sorted, once each."""
    found: set[int] = set()
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                found.add(item)
    return tuple(sorted(found))


def gguf_prompt_format(metadata: Mapping[str, Any], tokenizer: Tokenizer) -> PromptFormat:
    """From a GGUF header: `tokenizer.ggml.add_bos_token`, the eos / eot / eom ids, `tokenizer.chat_template`.

    A SentencePiece vocabulary (`tokenizer.ggml.model` "llama") that does not say gets BOS, as
    llama.cpp and transformers give it (older Llama 2 files have no flag).
    """
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = metadata.get("tokenizer.ggml.model") == "llama"
    return PromptFormat(
        add_bos_token=bool(add_bos),
        eos_token_ids=_ids([tokenizer.eos_id, *(metadata.get(key) for key in GGUF_EOS_KEYS)]),
        chat_template=tokenizer.chat_template,
    )


def _post_processor_adds_bos(spec: Mapping[str, Any], bos_token: str | None) -> bool:
    """Whether tokenizer.json's post-processor puts BOS before a single text (Llama 3 says so only
    there: `TemplateProcessing` with `single` = [BOS, $A], alone or in a `Sequence`)."""
    processor = spec.get("post_processor") or {}
    steps = processor.get("processors", []) if processor.get("type") == "Sequence" else [processor]
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            single = step.get("single") or [{}]
            first = single[0].get("SpecialToken", {}) if isinstance(single[0], dict) else {}
            return bos_token is not None and first.get("id") == bos_token
    return False


def hf_prompt_format(
    folder: Path,
    tokenizer: Tokenizer,
    tokenizer_json: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    read_json: Callable[[Path], dict[str, Any]],
) -> PromptFormat:
    """From an HF folder: BOS as tokenizer_config.json's `add_bos_token` or tokenizer.json's
    post-processor says; EOS ids from config.json, generation_config.json and the tokenizer's
    eos_token; the chat template from tokenizer_config.json or chat_template.jinja.

    read_json(path) reads a JSON object (raising an error that names the file).
    """
    add_bos = tokenizer_config.get("add_bos_token")
    if add_bos is None:
        add_bos = _post_processor_adds_bos(tokenizer_json, tokenizer.bos_token)
    declared = [read_json(folder / name).get("eos_token_id") for name in HF_EOS_FILES if (folder / name).is_file()]
    template = tokenizer.chat_template
    template_file = folder / CHAT_TEMPLATE_FILE
    if template is None and template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    return PromptFormat(
        add_bos_token=add_bos is True, eos_token_ids=_ids([tokenizer.eos_id, *declared]), chat_template=template
    )
