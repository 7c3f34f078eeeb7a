"""Typed configs to command-line options: one dataclass per entry point, each field documented once.

Every config field carries ``metadata={"help": ...}``; :func:`add_options` turns the fields into
argparse options (``--field-name``) and :func:`from_args` builds the dataclass back, so the
``--help`` text and the config cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with its one-line documentation."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def add_options(
    parser: argparse.ArgumentParser, config_type: type, defaults: dict[str, Any] | None = None, positional: tuple[str, ...] = ()
) -> None:
    """Add one option per field of ``config_type`` (defaults may be overridden per command); fields named in
    ``positional`` become optional positional arguments instead."""
    hints = typing.get_type_hints(config_type)
    defaults = defaults or {}
    for f in dataclasses.fields(config_type):
        if f.name in positional:
            default = defaults.get(f.name, f.default)
            parser.add_argument(f.name, nargs="?", default=default, help=f"{f.metadata.get('help', '')} (default: {default})")
            continue
        default = defaults.get(f.name, f.default)
        kind, optional = _unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        # a field whose None means "decided later" shows what it comes to (``shown_default``)
        help_text = f"{f.metadata.get('help', '')} (default: {f.metadata.get('shown_default', default)})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=default,
                help=help_text,
                choices=f.metadata.get("choices"),
                metavar=f.metadata.get("metavar"),
            )


def from_args(config_type: type[C], args: argparse.Namespace) -> C:
    return config_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)})


def _unwrap(hint: Any) -> tuple[type, bool]:
    """``int | None`` -> (int, True); ``str`` -> (str, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False
