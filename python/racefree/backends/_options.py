"""Reading and checking a backend's OPTIONS.

Every backend declares its options; anything else, or a value of the wrong
type, is an ``ImproperlyConfigured`` error when the backend is created,
not a surprise at the first request.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

from racefree._core import MAX_SECONDS


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    convert: Callable[[Any], Any]
    #: Other spellings accepted for drop-in switching (e.g. pymemcache's).
    aliases: tuple[str, ...] = ()
    #: Handed to the Rust store, by lowercase name (its settings struct
    #: has a field for it, and no default of its own).
    store: bool = False
    #: Holds a secret (a key, a password): never shown in an error.
    secret: bool = False


def shown(option: Option, value: object) -> str:
    """How an error names a value given for ``option``."""
    if option.secret:
        return f"a {type(value).__name__} (not shown: it may hold a secret)"
    return repr(value)


_T = TypeVar("_T")



def positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_SECONDS:
        raise ValueError(f"a number of seconds above 0 and at most {MAX_SECONDS:g}")
    return float(value)


def non_negative_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"a number of seconds from 0 to {MAX_SECONDS:g}")
    return float(value)


def positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("a positive integer")
    return value


def non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("an integer >= 0")
    return value


def optional(convert: Callable[[Any], _T]) -> Callable[[Any], _T | None]:
    def convert_optional(value: Any) -> _T | None:
        return None if value is None else convert(value)

    return convert_optional


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("True or False")
    return value


def must_be_true(value: object) -> bool:
    # Accepted for drop-in compatibility; racefree always behaves this way.
    if value is not True:
        raise ValueError("True (racefree always works this way)")
    return value


def read_options(
    backend: str, options: object, spec: Sequence[Option], unsupported: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return ``{name: value}`` for every option in ``spec``.

    ``unsupported`` maps option names to the reason they are refused.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"{backend}: OPTIONS must be a dict, not {type(options).__name__}")
    unsupported = unsupported or {}
    by_name: dict[str, Option] = {}
    option: Option | None
    for option in spec:
        for name in (option.name, *option.aliases):
            by_name[name] = option
    values = {option.name: option.default for option in spec}
    given_as: dict[str, str] = {}
    for name, value in options.items():
        if name in unsupported:
            raise ImproperlyConfigured(f"{backend}: OPTIONS[{name!r}] is not supported: {unsupported[name]}")
        option = by_name.get(name)
        if option is None:
            known = ", ".join(sorted(o.name for o in spec))
            raise ImproperlyConfigured(f"{backend}: unknown OPTIONS[{name!r}]; known options are {known}")
        if option.name in given_as:
            raise ImproperlyConfigured(
                f"{backend}: OPTIONS[{name!r}] and OPTIONS[{given_as[option.name]!r}] set the same option"
            )
        given_as[option.name] = name
        try:
            values[option.name] = option.convert(value)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"{backend}: OPTIONS[{name!r}] must be {exc}, not {shown(option, value)}"
            ) from None
    return values


def store_settings(options: Mapping[str, Any], spec: Sequence[Option]) -> dict[str, Any]:
    """The read options the Rust store takes: ``{lowercase name: value}``."""
    return {option.name.lower(): options[option.name] for option in spec if option.store}
