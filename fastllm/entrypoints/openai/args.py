"""`fastllm serve`'s options, importable without the server's dependencies (for `fastllm --help`)."""

from __future__ import annotations

import argparse
import os

API_KEY_ENV = "FASTLLM_API_KEY"
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_WAITING_REQUESTS = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`fastllm serve`'s options (the model options come from the caller)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model's name in the API (default: the model file or folder name)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset = no key)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="most requests running together (default: 256)")
    parser.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output (default: the model's)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="most tokens per step (default: 4096)")
    parser.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache size in blocks (default: from memory)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default: 16)")
    parser.add_argument("--no-prefix-caching", action="store_true", help="turn the prefix cache off")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="GPU memory share (default: 0.9)")
    parser.add_argument("--enforce-eager", action="store_true", help="never replay CUDA graphs")
    parser.add_argument("--tensor-parallel-size", type=int, default=1,
                        help="split the model over this many ranks, one process each (default: 1)")
    parser.add_argument("--max-waiting-requests", type=int, default=DEFAULT_MAX_WAITING_REQUESTS,
                        help=f"refuse new requests (503) while this many wait (default: {DEFAULT_MAX_WAITING_REQUESTS})")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"refuse larger request bodies (413) (default: {DEFAULT_MAX_REQUEST_BYTES})")
    parser.add_argument("--shutdown-timeout", type=float, default=5.0,
                        help="on SIGINT/SIGTERM, seconds to let requests in flight finish before aborting them "
                             "(default: 5)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
