"""`llmship run | validate | status | flush | tap | top | intake`. Every flag also reads an LLMSHIP_* environment
variable."""

from __future__ import annotations

import argparse
import os
import sys

from llmship import __version__
from llmship.config import ConfigError, load_config


def env_default(name: str, default=None):
    return os.environ.get(f"LLMSHIP_{name}", default)


def _add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=env_default("CONFIG"),
                   help="TOML config file (env LLMSHIP_CONFIG); without it the embedded default is used")


def _add_agent_flags(p: argparse.ArgumentParser) -> None:
    _add_config_flag(p)
    p.add_argument("--url", default=env_default("URL"),
                   help="the agent's status endpoint (env LLMSHIP_URL); default: [status] listen from the config")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmship", description="Ship LLM telemetry to Datadog intakes.")
    p.add_argument("--version", action="version", version=f"llmship {__version__}")
    sub = p.add_subparsers(dest="verb", required=True)

    run = sub.add_parser("run", help="run the agent")
    _add_config_flag(run)
    run.add_argument("--lambda", dest="aws_lambda", action="store_true",
                     help="run as an AWS Lambda extension (the default when AWS_LAMBDA_RUNTIME_API is set)")

    validate = sub.add_parser("validate", help="check a config: the start-up path without binding sockets")
    _add_config_flag(validate)

    status = sub.add_parser("status", help="print the running agent's counters")
    _add_config_flag(status)
    status.add_argument("--url", default=env_default("URL"),
                        help="status endpoint, e.g. http://127.0.0.1:5012 (env LLMSHIP_URL); "
                             "default: [status] listen from the config")
    status.add_argument("--json", action="store_true", default=env_default("JSON", "") not in ("", "0"),
                        help="print the raw JSON (env LLMSHIP_JSON=1)")

    from llmship import flush

    flush_verb = sub.add_parser("flush", help="make the running agent deliver everything it holds now")
    _add_config_flag(flush_verb)
    flush.add_arguments(flush_verb, env_default)

    tap = sub.add_parser("tap", help="stream what the running agent is about to send, as JSON lines")
    _add_agent_flags(tap)
    tap.add_argument("--kind", action="append", choices=("spans", "llmobs", "logs", "metrics"),
                     help="what to show (repeat for several); default: everything")
    tap.add_argument("--service", default="", help="only items of this service (glob)")
    tap.add_argument("--model", default="", help="only items of this model (glob)")
    tap.add_argument("--rate", type=float, default=100.0,
                     help="at most this many items a second; the agent skips (and counts) the rest")
    tap.add_argument("--limit", type=int, default=0, help="stop after this many items")
    tap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")

    top = sub.add_parser("top", help="live rates of every component, refreshed in place")
    _add_agent_flags(top)
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=int, default=None, help="stop after this many frames")
    top.add_argument("--once", action="store_true", help="one frame (rates over --interval), then exit")

    from llmship.intake import cli as intake_cli

    intake = sub.add_parser("intake", help="a local stand-in for the Datadog intakes, recording to SQLite")
    intake_cli.add_arguments(intake)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verb == "intake":
        from llmship.intake import cli as intake_cli

        return intake_cli.main(args)
    try:
        if args.verb == "run":
            from llmship.agent import run
            from llmship.aws_lambda import lambda_mode_requested

            return run(args.config, lambda_mode=lambda_mode_requested(args.aws_lambda, os.environ))
        if args.verb == "validate":
            return validate(args.config)
        if args.verb == "status":
            return status(args)
        if args.verb == "flush":
            from llmship.flush import flush_main
            from llmship.status import url_for_listen

            return flush_main(args, args.url or url_for_listen(load_config(args.config).status.listen))
        if args.verb == "tap":
            from llmship.tap import tap_main

            return tap_main(args, _status_url(args))
        if args.verb == "top":
            from llmship.top import top_main

            return top_main(args, _status_url(args))
    except ConfigError as e:
        for problem in e.problems:
            print(f"llmship: invalid config: {problem}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a port already in use at start-up: one clear line, no traceback
        print(f"llmship: {e}", file=sys.stderr)
        return 1
    return 2


def validate(config_path: str | None) -> int:
    from llmship.agent import build

    cfg = load_config(config_path)
    build(cfg)
    print(f"llmship: config {config_path or '(embedded default)'} is valid")
    return 0


def status(args: argparse.Namespace) -> int:
    from llmship.status import status_main

    if not args.url:
        host, _, port = load_config(args.config).status.listen.rpartition(":")
        host = host.strip("[]")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        args.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return status_main(args)


def _status_url(args: argparse.Namespace) -> str:
    """The agent's /status URL: --url, or [status] listen from the config."""
    from llmship.status import status_url, url_for_listen

    if args.url:
        return status_url(args.url)
    try:
        return url_for_listen(load_config(args.config).status.listen)
    except ValueError as e:  # e.g. [status] listen = "" (disabled)
        raise ConfigError([f"status.listen: {e} (pass --url)"]) from None
