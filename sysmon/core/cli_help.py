"""`sysmon <command> --help` in the words users type: types as TOKEN, PATH, DURATION, KEY=VALUE,...
and defaults as 24h, 5m, env=prod (pydantic-settings prints `{SecretStr,null}`, `dict[str,str]` and
`1 day, 0:00:00`). A CliSettingsSource that formats the metavars and defaults, nothing else."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import CliSettingsSource

from sysmon.core.durations import format_duration

# For metavars of unions: None is the flag left out, not a value to type.
_NONE = type(None)


def cli_duration(td: timedelta) -> str:
    """As users write it: 24h rather than 1d for a day, 7d for a week, 5m, 50ms."""
    if timedelta(0) < td < timedelta(days=2) and td % timedelta(hours=1) == timedelta(0):
        return f"{int(td.total_seconds() // 3600)}h"
    return format_duration(td)


def metavar(annotation: Any) -> str | None:
    """The word a flag's value is shown as; None where pydantic-settings' own is clear (choices, bool)."""
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in get_args(annotation) if a is not _NONE]
        if len(inner) == 1:
            return metavar(inner[0])
        return None
    if annotation is timedelta:
        return "DURATION"
    if annotation is SecretStr:
        return "TOKEN"
    if annotation is Path:
        return "PATH"
    if annotation is str:
        return "TEXT"
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUMBER"
    if origin is dict or annotation is dict:
        return "KEY=VALUE,..."
    if origin is list:
        (item,) = get_args(annotation) or (str,)
        word = metavar(item) or "VALUE"
        return word if word == "PATH" else f"{word},..."
    return None


def default_text(field: FieldInfo, model_default: Any = PydanticUndefined) -> str | None:
    """The default as a user would type it; None to keep pydantic-settings' text."""
    factory = model_default if callable(model_default) and not isinstance(model_default, type) else \
        field.default_factory
    if factory is not None:
        try:
            value = factory()  # type: ignore[call-arg]
        except Exception:
            return None
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, timedelta):
        return cli_duration(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, Path):
        return str(value)
    if value == "":
        return "empty"
    if factory is not None and isinstance(value, str):
        return value  # computed here, as the command would (this machine's name)
    return None


class HelpSource(CliSettingsSource):  # type: ignore[type-arg]
    def _metavar_format(self, obj: Any) -> str:
        return metavar(obj) or super()._metavar_format(obj)

    def _help_format(self, field_name: str, field_info: FieldInfo, model_default: Any, is_model_suppressed: bool,
                     env_var_names: tuple[str, ...] = ()) -> str:
        text = super()._help_format(field_name, field_info, model_default, is_model_suppressed, env_var_names)
        shown = default_text(field_info, model_default)
        if shown is None:
            return text
        for marker in (" (default factory: ", " (default: ", "(default factory: ", "(default: "):
            at = text.rfind(marker)
            if at >= 0:
                end = text.find(")", at + len(marker))
                # The default's own text may hold parentheses ("1 day, 0:00:00" does not; a repr might).
                end = len(text) - 1 if end < 0 else end
                return text[:at] + f"{marker.split('(')[0]}(default: {shown.replace('%', '%%')})" + text[end + 1:]
        return text
