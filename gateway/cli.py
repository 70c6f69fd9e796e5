"""The `lightgate` command line: `lightgate serve` starts the gateway."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import httpx

from gateway.config import ModelConfig, load_settings


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.connections import uvicorn_config
    from gateway.drain import DrainingServer

    overrides: dict[str, object] = {"host": args.host, "port": args.port}
    if args.model:
        overrides["models"] = [ModelConfig(name=Path(args.model).stem, backend="llamacpp", path=args.model)]
    try:
        settings = load_settings(args.config, **overrides)
        app = create_app(settings)
    except (OSError, ValueError, LookupError, RuntimeError) as exc:
        print(f"lightgate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The access log's lines are JSON objects already: written as they are, to stdout.
    access = logging.getLogger("lightgate.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    config = uvicorn_config(
        app,
        settings,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=not settings.access_log,  # ours has the request id, model and timings; one is enough
        timeout_graceful_shutdown=10,  # after the drain: what is still open gets this long
    )
    DrainingServer(config, app.state.drain, settings.drain_timeout_s).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command and option of `lightgate` (the Helm chart's args are checked against it)."""
    parser = argparse.ArgumentParser(prog="lightgate", description="OpenAI-compatible gateway for compressed LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the configured models (the embedded default without a config)")
    serve.add_argument("--config", help="YAML config file (LIGHTGATE_* environment variables override it)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument(
        "--model", help="serve this .gguf file on llama.cpp (named after the file) instead of the config's models"
    )
    serve.set_defaults(func=_serve)
    bench = sub.add_parser("bench", help="load-test an OpenAI-compatible server").add_subparsers(
        dest="bench_command", required=True
    )
    from compressed_models.cli import add_parser as add_models
    from compressed_models.eval_cli import add_parser as add_eval
    from compressed_models.results import perplexity
    from loadtest.cli import add_parser as add_bench_run
    from loadtest.compare import add_parser as add_bench_compare
    from loadtest.sweep import add_parser as add_bench_sweep

    add_bench_run(bench)
    add_bench_sweep(bench)
    add_bench_compare(bench, perplexity_of=perplexity)

    add_models(sub)
    add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (OSError, ValueError, LookupError, RuntimeError, httpx.HTTPError) as exc:
        # A missing file, an unreachable server, a bad option value: one line, not a trace.
        print(f"lightgate: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
