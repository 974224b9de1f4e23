"""Frozen dataclasses whose fields declare command-line options: each field's metadata holds its
flag, help, argparse settings and the function that normalises its value, so that the parser,
``from_argv`` and ``to_argv`` all come from that one declaration. Torch-free."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import field
from typing import Any, Callable, ClassVar, Sequence, TypeVar

from .errors import SegGradCAMError

Options = TypeVar("Options", bound="CommandOptions")
SWITCHES = ("store_true", "store_false")


def option(
    flag: str,
    default: Any = None,
    help: str = "",
    normalise: Callable[[Any], Any] | None = None,
    **argparse_settings: Any,
) -> Any:
    """A field declared as a command-line option: ``flag`` (``""``: positional), ``help``, the
    ``normalise`` function that gives its value one representation (tuples, Paths), and further
    :meth:`argparse.ArgumentParser.add_argument` settings."""
    return field(default=default, metadata={"flag": flag, "help": help, "normalise": normalise, **argparse_settings})


def option_text(value: Any) -> str:
    """A value as the command line writes it: lists comma-separated, an empty list ``none``."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    """A field's default as declared (nested options built by their factory)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc,operator]


def _normalised(f: dataclasses.Field, value: Any) -> Any:
    normalise = f.metadata.get("normalise")
    return value if normalise is None else normalise(value)


class CommandOptions:
    """``add_arguments``/``from_argv``/``to_argv`` from the fields' declarations; nested option
    dataclasses (``engine``) add their own arguments, in their ``GROUP``. Subclasses call
    :meth:`normalise_fields` first in ``__post_init__``."""

    GROUP: ClassVar[str | None] = None

    def normalise_fields(self) -> None:
        """Bring each field of these frozen options to its one representation."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, _normalised(f, getattr(self, f.name)))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The options of ``cls`` as arguments of ``parser``, with their declared defaults."""
        target = parser.add_argument_group(cls.GROUP) if cls.GROUP else parser
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = _default(f)
            if isinstance(default, CommandOptions):
                type(default).add_arguments(parser)
                continue
            settings = {k: v for k, v in f.metadata.items() if k not in ("flag", "normalise")}
            if f.metadata["flag"]:
                target.add_argument(f.metadata["flag"], dest=f.name, default=default, **settings)
            else:
                target.add_argument(f.name, **settings)

    @classmethod
    def from_namespace(cls: type[Options], args: argparse.Namespace) -> Options:
        """Options from parsed arguments (validated by the constructor)."""
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = _default(f)
            is_nested = isinstance(nested, CommandOptions)
            values[f.name] = type(nested).from_namespace(args) if is_nested else getattr(args, f.name)
        return cls(**values)

    @classmethod
    def from_argv(cls: type[Options], argv: Sequence[str]) -> Options:
        """Options from the command's arguments (without the command's name); a bad one is a
        :class:`SegGradCAMError` naming it."""
        parser = _Parser(prog=f"seggradcam {cls.__name__}", add_help=False)
        cls.add_arguments(parser)
        try:
            return cls.from_namespace(parser.parse_args(list(argv)))
        except _ArgumentError as error:
            raise SegGradCAMError(str(error)) from None

    def to_argv(self) -> list[str]:
        """The command-line arguments that give these options (defaults left out)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, flag = getattr(self, f.name), f.metadata.get("flag")
            if isinstance(value, CommandOptions):
                argv += value.to_argv()
            elif not flag:
                argv += [str(v) for v in value]
            elif value != _normalised(f, _default(f)):
                argv += [flag] if f.metadata.get("action") in SWITCHES else _flag_and_value(flag, option_text(value))
        return argv


def _flag_and_value(flag: str, text: str) -> list[str]:
    """``--flag value``, or ``--flag=value`` for a value that argparse would take for an option (``-x``)."""
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting (library use)."""

    def error(self, message: str):  # type: ignore[override]
        raise _ArgumentError(message)
