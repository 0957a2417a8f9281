"""Command-line helpers shared by the entry points: lists given space- or comma-separated (`--tasks a b,c`)."""

from __future__ import annotations

import argparse


def split_values(values: list[str] | None) -> list[str] | None:
    """`nargs="+"` values with commas split too: ["a", "b,c"] -> ["a", "b", "c"]; None stays None."""
    return None if values is None else [v for value in values for v in value.split(",") if v]


def given_values(parser: argparse.ArgumentParser, flag: str, values: list[str] | None) -> list[str] | None:
    """`split_values`, where a flag given with only empty values (e.g. `--tasks ,`) is a parser error naming `flag`."""
    split = split_values(values)
    if split == []:
        parser.error(f"{flag}: no values given")
    return split


def int_values(parser: argparse.ArgumentParser, flag: str, values: list[str] | None) -> list[int] | None:
    """`split_values` as ints; a value that is not an integer is a parser error naming `flag`."""
    try:
        return None if values is None else [int(v) for v in split_values(values)]
    except ValueError:
        parser.error(f"{flag}: expected integers, got {' '.join(values)}")
