"""The `fastllm` command, run in-process (it shares the cached default LLM with the API tests)."""

import ast
import json
from pathlib import Path

import pytest

from fastllm import SamplingParams
from fastllm.entrypoints import cli


@pytest.fixture(scope="module")
def llm(default_llm):
    return default_llm


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tokenize_prints_ids_as_json(capsys, llm):
    code, out, _ = run(capsys, "tokenize", "Hello world, 123!")
    assert code == 0 and json.loads(out) == llm.tokenizer.encode("Hello world, 123!")
    code, out, _ = run(capsys, "tokenize", "Hi there", "--tokens")
    assert json.loads(out) == [[i, llm.tokenizer.decode([i])] for i in llm.tokenizer.encode("Hi there")]


def test_generate_prints_the_text_and_stats(capsys, llm):
    expected = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)
    code, out, err = run(capsys, "generate", "The capital of France is", "--temperature", "0", "--max-tokens", "6")
    assert code == 0 and out == expected[0].text + "\n"
    assert "tokens/s" in err and "finish_reason=" in err


def test_generate_chat_stream(capsys, llm):
    messages = [{"role": "user", "content": "Say hi."}]
    expected = llm.chat(messages, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)[0].text
    code, out, _ = run(capsys, "generate", "Say hi.", "--chat", "--stream", "--temperature", "0", "--max-tokens", "6")
    assert code == 0 and out == expected + "\n"


def test_interactive_chat_keeps_history_and_resets(capsys, monkeypatch, llm):
    lines = iter(["Hello!", "And again?", "/reset", "", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    seen = []
    original = llm.apply_chat_template
    monkeypatch.setattr(llm, "apply_chat_template", lambda messages, **kw: seen.append(list(messages)) or original(messages, **kw))
    code, out, err = run(capsys, "chat", "--temperature", "0", "--max-tokens", "4", "--system", "Be brief.")
    assert code == 0 and "/reset" in err
    assert [m["role"] for m in seen[0]] == ["system", "user"]
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]


def test_chat_ends_on_eof(capsys, monkeypatch, llm):
    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", eof)
    assert run(capsys, "chat")[0] == 0


def test_demo(capsys, monkeypatch, llm):
    monkeypatch.setattr(cli, "DEMO_MAX_TOKENS", 5)
    code, out, _ = run(capsys, "demo")
    assert code == 0 and cli.DEMO_QUESTION in out and "tokens/s" in out


def test_bad_values_exit_with_a_message(capsys, llm):
    code, _, err = run(capsys, "generate", "hi", "--top-p", "0")
    assert code == 2 and "SamplingParams.top_p" in err
    code, _, err = run(capsys, "tokenize", "hi", "--model", "/no/such.gguf")
    assert code == 2 and "/no/such.gguf" in err


def test_serve_refuses_bad_options_before_loading(capsys):
    code, _, err = run(capsys, "serve", "--max-num-seqs", "0")
    assert code == 2 and "max_num_seqs must be an int >= 1" in err
    code, _, err = run(capsys, "serve", "--max-waiting-requests", "-1")
    assert code == 2 and "--max-waiting-requests must be >= 0" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["generate", "hi", "--max-tokens", "many"])


def test_the_cli_uses_only_the_public_api():
    tree = ast.parse(Path(cli.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # (fastllm.entrypoints.openai: the server, a sibling front end, for `fastllm serve`)
    assert {m for m in imported if m.startswith("fastllm")} <= {"fastllm", "fastllm.api", "fastllm.entrypoints.openai"}
