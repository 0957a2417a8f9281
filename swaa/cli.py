"""Command-line helpers shared by the entry points: lists given space- or comma-separated (`--tasks a b,c`), int
ranges checked by argparse, and input errors as one line with exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn


def split_values(values: list[str] | None) -> list[str] | None:
    """`nargs="+"` values with commas split too: ["a", "b,c"] -> ["a", "b", "c"]; None stays None."""
    return None if values is None else [v for value in values for v in value.split(",") if v]


def given_values(parser: argparse.ArgumentParser, flag: str, values: list[str] | None) -> list[str] | None:
    """`split_values`, where a flag given with only empty values (e.g. `--tasks ,`) is a parser error naming `flag`."""
    split = split_values(values)
    if split == []:
        parser.error(f"{flag}: no values given")
    return split


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= `low` (argparse's error names the option)."""
    def parse(text: str) -> int:
        try:
            if int(text) >= low:
                return int(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return parse


def int_values(parser: argparse.ArgumentParser, flag: str, values: list[str] | None, minimum: int) -> list[int] | None:
    """`given_values` as ints >= `minimum`; any other value is a parser error naming `flag`."""
    split, parse = given_values(parser, flag, values), int_at_least(minimum)
    try:
        return None if split is None else [parse(v) for v in split]
    except argparse.ArgumentTypeError as e:
        parser.error(f"{flag}: {e}")


def exit_input_error(prog: str, error: Exception) -> NoReturn:
    """End a command on a bad input as argparse does on a bad argument: one `prog: error: ...` line, exit status 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    sys.exit(2)
