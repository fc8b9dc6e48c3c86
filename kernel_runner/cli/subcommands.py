"""The shape both `kernel-runner client` and `kernel-runner ctl` parse: options before or after the command.

Stdlib only: `ctl` must start in a blink (docs/architecture.md §2.1).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

AddOptions = Callable[..., None]  # (parser, *, with_defaults: bool) -> None
AddCommand = Callable[[str, str], argparse.ArgumentParser]


def parser_with_commands(*, prog: str, description: str, epilog: str,
                         add_options: AddOptions) -> tuple[argparse.ArgumentParser, AddCommand]:
    """The top parser and a function that adds one command to it. Every command takes the common options too, but
    without defaults, so an option given before the command is not overwritten by the command's default."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, with_defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        made = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        add_options(made, with_defaults=False)
        return made

    return parser, command


__all__ = ["parser_with_commands"]
