"""The ``mudpt`` command: a thin argparse layer over the library.

Each package that adds sub-commands exposes ``register_commands(subparsers)`` in its
``commands`` module; a sub-command stores its handler in ``func`` and returns an exit code.
Errors are handled here, once: a :class:`~mudpt.core.errors.UserError` is printed as one
paragraph (with the flag that sets the field it names) and the command exits with status 2;
``MUDPT_DEBUG=1`` shows its traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("mudpt.engine.commands", "mudpt.data.commands", "mudpt.world.commands")


def build_parser() -> argparse.ArgumentParser:
    from mudpt._version import __version__

    parser = argparse.ArgumentParser(
        prog="mudpt",
        description="Prompt tuning of CLIP-style models: MuDPT and its baselines.",
    )
    parser.add_argument("--version", action="version", version=f"mudpt {__version__}")
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


def _all_parsers(parser: argparse.ArgumentParser):
    """The parser and every command's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def command_parser(parser: argparse.ArgumentParser, names) -> argparse.ArgumentParser:
    """The parser of the command ``names`` (``["data", "check"]``) under the main parser."""
    for name in names:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                parser = action.choices[name]
                break
    return parser


def flag_for(parser: argparse.ArgumentParser, field: str | None) -> str | None:
    """The flag of *this* command's parser that sets configuration field ``field`` (``lr`` ->
    ``--lr``; ``method_options.n_ctx`` -> ``--set method_options.n_ctx=...`` where the command has
    ``--set``), or None: a hint never names a flag the command does not have."""
    if not field:
        return None
    aliases = parser.get_default("field_flags") or {}  # a command's own answer (sweep: --rerun-changed)
    if field in aliases:
        return aliases[field]
    own = {action.dest: max(action.option_strings, key=len) for action in parser._actions
           if action.option_strings and not isinstance(action, argparse._SubParsersAction)}
    if "." not in field and field in own:
        return own[field]
    # --set for configuration values only (a TrainConfig key or a method option), never for what
    # decides about folders
    from mudpt.engine.config import TrainConfig

    settable = field.startswith("method_options.") or field in TrainConfig.option_names()
    if "set_items" in own and settable and field not in ("overwrite", "output_dir"):
        return f"--set {field}=..."
    return None


def format_user_error(command: str, error: Exception, parser: argparse.ArgumentParser) -> str:
    """One paragraph: the error and, where the command has one, the flag that sets its field
    (``parser`` is the command's own)."""
    message = " ".join(str(error).split())  # one paragraph
    flag = flag_for(parser, getattr(error, "field", None))
    hint = f" (command line: {flag})" if flag and flag.split()[0] not in message else ""
    return f"mudpt {command}: error: {message}{hint}"


def main(argv: list[str] | None = None) -> int:
    from mudpt.core.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    names = list(filter(None, (args.command, getattr(args, "data_command", None),
                               getattr(args, "world_command", None))))
    command = " ".join(names)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        if os.environ.get("MUDPT_DEBUG"):
            raise
        print(format_user_error(command, error, command_parser(parser, names)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mudpt {command}: interrupted (rerun the same command to resume).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
