"""The `fastllm` command: generate, chat, tokenize, serve, demo.

    fastllm generate "Once upon a time" --max-tokens 64 --temperature 0.7 --stream
    fastllm generate "What is a paged KV cache?" --chat
    fastllm chat                      # interactive, streaming; /reset clears the history, /exit quits
    fastllm tokenize "Hello world"    # token ids as JSON
    fastllm serve --port 8000         # the OpenAI-compatible server (needs the `serve` extra)
    fastllm demo                      # what `make demo` runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from fastllm import LLM, RequestOutput, SamplingParams, Tokenizer, default_model_path
from fastllm.api import get_llm
from fastllm.entrypoints.openai import args as serve_args

DEMO_QUESTION = "Explain in two sentences why the sky is blue."
DEMO_MAX_TOKENS = 96


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="GGUF file or HF folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--backend", default="auto", help="auto, torch, triton or cpu (default: auto)")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    parser.add_argument("--top-p", type=float, default=0.95, help="1 = off (default: 0.95)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastllm", description="Run a Llama-family model with fastllm.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate text for one prompt")
    generate.add_argument("prompt", help="the prompt text")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--stream", action="store_true", help="print the text as it is generated")
    _add_model_options(generate)
    _add_sampling_options(generate)

    chat = commands.add_parser("chat", help="chat interactively (streaming)")
    chat.add_argument("--system", default=None, help="a system message to start the conversation with")
    _add_model_options(chat)
    _add_sampling_options(chat)

    tokenize = commands.add_parser("tokenize", help="print the token ids of a text as JSON")
    tokenize.add_argument("text")
    tokenize.add_argument("--model", default=None, help="GGUF file or HF folder whose tokenizer to use")
    tokenize.add_argument("--tokens", action="store_true", help="print [id, piece] pairs instead of ids")

    serve = commands.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    _add_model_options(serve)
    serve_args.add_arguments(serve)

    commands.add_parser("demo", help="answer a question with the default model; print text and tokens/s")
    return parser


def _load_llm(args: argparse.Namespace) -> LLM:
    if (args.device, args.dtype, args.backend) == ("auto", "auto", "auto"):
        return get_llm(args.model)  # shared with fastllm.generate in the same process
    return LLM(args.model, device=args.device, dtype=args.dtype, backend=args.backend)


def _sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )


def _stats(output: RequestOutput) -> str:
    """"N tokens, X tokens/s (first token after Y s)": decode speed from the first to the last token."""
    metrics, count = output.metrics, len(output.token_ids)
    decode_time = metrics.finished_time - metrics.first_token_time
    rate = f"{(count - 1) / decode_time:.1f} tokens/s" if count > 1 and decode_time > 0 else "n/a tokens/s"
    return f"{count} tokens, {rate} (first token after {metrics.time_to_first_token:.2f} s)"


def _print_stream(llm: LLM, prompt: str | list[int], params: SamplingParams) -> RequestOutput:
    stream = llm.stream(prompt, params)
    try:
        for delta in stream:
            print(delta, end="", flush=True)
    finally:
        stream.close()
    print()
    return stream.output


def _generate(args: argparse.Namespace) -> int:
    llm = _load_llm(args)
    params = _sampling_params(args)
    prompt = llm.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    if args.chat:  # the template text already holds its special tokens (and BOS if any)
        prompt = llm.tokenizer.encode(prompt, allow_special=True)
    if args.stream:
        output = _print_stream(llm, prompt, params)
    else:
        output = llm.generate(prompt if isinstance(prompt, str) else [prompt], params, use_tqdm=False)[0]
        print(output.text)
    print(f"[{_stats(output)}, finish_reason={output.finish_reason}]", file=sys.stderr)
    return 0


def _chat(args: argparse.Namespace) -> int:
    llm = _load_llm(args)
    params = _sampling_params(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    print("fastllm chat: /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(system)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        prompt_ids = llm.tokenizer.encode(llm.apply_chat_template(history), allow_special=True)
        try:
            output = _print_stream(llm, prompt_ids, params)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session
            print("\n[interrupted]", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": output.text})


def _tokenize(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_path(args.model if args.model is not None else default_model_path())
    ids = tokenizer.encode(args.text)
    if args.tokens:
        print(json.dumps([[i, tokenizer.decode([i])] for i in ids], ensure_ascii=False))
    else:
        print(json.dumps(ids))
    return 0


def _demo(_: argparse.Namespace) -> int:
    start = time.perf_counter()
    llm = get_llm()
    print(f"Loaded {llm!r} in {time.perf_counter() - start:.1f} s")
    print(f"\nUser: {DEMO_QUESTION}\nAssistant: ", end="", flush=True)
    output = llm.chat(
        [{"role": "user", "content": DEMO_QUESTION}],
        SamplingParams(temperature=0, max_tokens=DEMO_MAX_TOKENS),
        use_tqdm=False,
    )[0]
    print(output.text)
    print(f"\n[{_stats(output)}, prompt {len(output.prompt_token_ids)} tokens]")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:  # only here: FastAPI, uvicorn and prometheus_client are the `serve` extra
        from fastllm.entrypoints.openai import api_server
    except ImportError as error:
        raise ValueError(f"serving needs the `serve` extra ({error}): pip install 'fastllm[serve]'") from None
    return api_server.run(args)


COMMANDS = {"generate": _generate, "chat": _chat, "tokenize": _tokenize, "serve": _serve, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fastllm` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"fastllm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
