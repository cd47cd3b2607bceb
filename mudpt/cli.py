"""The ``mudpt`` command: a thin argparse layer over the library.

Each package that adds sub-commands exposes ``register_commands(subparsers)`` in its
``commands`` module; a sub-command stores its handler in ``func`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("mudpt.engine.commands", "mudpt.data.commands", "mudpt.world.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mudpt",
        description="Prompt tuning of CLIP-style models: MuDPT and its baselines.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.register_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
