"""Method options as dataclasses, in the style of TRL's ``*Config`` classes: one field per option with its help text
in the field's metadata, every check in ``__post_init__``, and errors that name the option.

The core knows options by their own names (``top_k``, ``prefix.name``); where an option lives in the user's config
(its Hydra key, in a run through OU) is the adapter layer's business: it catches :class:`OptionError`
and re-raises it with :meth:`OptionError.under`. Renamed options keep working for one release:
:func:`build` maps a config's ``renamed`` names to the new ones with a ``FutureWarning``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class OptionError(ValueError):
    """A bad option value: ``option`` is its dotted name within the method's options, ``problem`` the rest of the
    sentence (``str(err) == f"{option} {problem}"``, no space before a problem that starts with ``=``)."""

    def __init__(self, option: str, problem: str) -> None:
        self.option, self.problem = option, problem
        super().__init__(option + ("" if problem.startswith("=") else " ") + problem)

    def under(self, prefix: str) -> OptionError:
        """The same error with ``option`` placed under ``prefix`` (e.g. the adapter's Hydra prefix)."""
        return OptionError(f"{prefix}{self.option}", self.problem)


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text (``factory`` for mutable defaults)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def option_names(cls: type) -> tuple[str, ...]:
    """Every option of a config dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def accepted(cls: type) -> tuple[str, ...]:
    """What a method's options may hold: every option and every old name that still works."""
    return (*option_names(cls), *getattr(cls, "renamed", {}))


def option_help(cls: type) -> dict[str, str]:
    """``{option: help text}`` of a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def rename_options(
    options: Mapping[str, Any], renamed: Mapping[str, str], method: str, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``options`` with each old name in ``renamed`` moved to its new name, with a warning. A set old name wins over
    the new one at its default (a config file carries the default; an old override on the command line means to
    change it); both set to different values is an error. An old name set to None is dropped (the shipped YAMLs keep
    the old keys, null, so that old overrides still apply)."""
    out = dict(options)
    for old, new in renamed.items():
        if out.get(old) is None:
            out.pop(old, None)
            continue
        if new in out and defaults is not None and out[new] not in (defaults.get(new), out[old]):
            raise OptionError(
                old, f"(the old name of {new}) is {out[old]!r} but {new} is {out[new]!r}; give {new} only."
            )
        warnings.warn(
            f"{method}: option {old!r} is renamed {new!r}; the old name will stop working in the next release.",
            FutureWarning,
            stacklevel=3,
        )
        out[new] = out.pop(old)
    return out


def build(cls: type[T], options: Mapping[str, Any], method: str | None = None) -> T:
    """``cls(**options)`` after the renames in ``cls.renamed`` (a ``{old: new}`` class attribute, if any)."""
    renamed = getattr(cls, "renamed", {})
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return cls(**rename_options(options, renamed, method or cls.__name__, defaults))


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1, else an :class:`OptionError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(name, f"must be a positive integer, got {value!r}.")
    return value


def one_of(name: str, value: Any, allowed: tuple[str, ...], hint: str = "") -> Any:
    """``value`` if it is in ``allowed``, else an :class:`OptionError` listing them."""
    if value not in allowed:
        raise OptionError(name, f"must be one of {allowed}{hint}, got {value!r}.")
    return value
