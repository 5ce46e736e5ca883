"""`softprompt serve`: the HTTP server (needs the `serve` extra)."""

from __future__ import annotations

import os

from .options import HelpFormatter, add_model_options, dtype_of, option


def add_commands(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve adapters over HTTP (OpenAI-compatible: /v1/completions, /v1/chat/completions, /v1/classify)",
        description="Serve many soft prompts on one frozen base model. "
        "`model` in a request names an adapter or the base model.",
        formatter_class=HelpFormatter,
    )
    option(
        serve,
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an adapter to serve (folder or Hub id), as NAME=PATH or PATH; repeat for more",
    )
    option(serve, "--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    option(serve, "--port", type=int, default=8000, help="port to listen on")
    option(
        serve,
        "--api-key",
        default=os.environ.get("SOFTPROMPT_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every request; enables load/unload (env SOFTPROMPT_API_KEY)",
    )
    option(serve, "--max-batch-size", type=int, default=32, help="rows computed together at most")
    option(serve, "--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    option(serve, "--cache-bytes", type=int, default=2**30, help="memory for cached prompt keys/values")
    option(serve, "--one-adapter-per-batch", action="store_true", help="never mix adapters in a batch (a baseline)")
    add_model_options(serve)
    serve.set_defaults(run=command_serve)


def command_serve(args, extra) -> int:
    from ..serving import serve  # imported here: FastAPI is the optional `serve` extra

    serve(
        args.adapter,
        args.model,
        args.host,
        args.port,
        args.api_key,
        args.max_batch_size,
        args.max_wait_ms,
        args.device,
        dtype_of(args),
        args.cache_bytes,
        mix_adapters=not args.one_adapter_per_batch,
    )
    return 0
