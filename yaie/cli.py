"""The `yaie` command: argv -> configs -> launch. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yaie", description="YAIE: LLM serving engine and OpenAI server")
    sub = parser.add_subparsers(dest="command", required=True)
    from yaie.bench.cli import add_bench_parser
    from yaie.chat import add_chat_parser
    from yaie.gateway.cli import add_gateway_parsers
    from yaie.server.launch import add_serve_parser

    add_serve_parser(sub)
    add_chat_parser(sub)
    add_bench_parser(sub)
    add_gateway_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
