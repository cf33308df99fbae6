"""Render a model's own chat template (jinja2), the way HF transformers' apply_chat_template does.

jinja2 is imported on the first render, not with the engine: a process that never renders a
conversation does not hold it (about 2 MB resident).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    # HF keeps non-ASCII text as is (jinja2's own tojson escapes it and HTML characters).
    return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The same environment options as transformers, so whitespace comes out identical.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def check_messages(messages: object) -> list[dict[str, Any]]:
    """A conversation must be a non-empty list of {"role": str, "content": str, ...} dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got {messages!r}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f"messages[{index}][{key!r}] must be a str, got {message.get(key)!r}")
    return [dict(message) for message in messages]


def render_chat_template(
    template: str | None,
    messages: object,
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """The prompt text for `messages`; add_generation_prompt appends the assistant turn's header."""
    if template is None:
        raise ValueError("this model has no chat template: pass plain prompts to generate() instead of chat()")
    conversation = check_messages(messages)
    import jinja2

    try:
        return _compile(template).render(
            messages=conversation,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ValueError(f"the model's chat template failed to render these messages: {exc}") from exc
