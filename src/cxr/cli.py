"""The ``cxr`` command. Light subcommands never import TensorFlow."""
from __future__ import annotations

import argparse
import dataclasses
import json

from cxr import __version__
from cxr.errors import run_command


def _params(args: argparse.Namespace) -> None:
    from cxr.params import load_params
    params = load_params(args.file)
    print(json.dumps(dataclasses.asdict(params), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classifiers on NIH ChestX-ray14.")
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="validate params.yaml and print the parsed values")
    p.add_argument("file", nargs="?", default="params.yaml")
    p.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_command(lambda: args.func(args), "cxr")
if __name__ == "__main__":
    main()
