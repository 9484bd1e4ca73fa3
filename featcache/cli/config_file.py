"""Experiment files: ``--config FILE.toml`` gives a command's options from a file, and `resolved_config` writes one.

Keys are the options as spelled on the command line without the dashes in front (``weight-decay``), and the
positional arguments by name (``store``, ``data``); the command line wins over the file. Values are TOML's types:
a whole number for an integer option, a number for a float option, ``true``/``false`` for a flag. An option the
command line takes as comma-separated text (``--lr 1e-4,2e-4``, ``--seeds 0-4``) takes that text, a number, or
a list of numbers or words, which is joined with commas (``lr = [1e-4, 2e-4]``, ``seeds = [0, 1, 2]``,
``seeds = "0-4"``); a repeatable option takes a list. The reserved ``[command]`` table (the command line that
wrote the file) is skipped on reading. Relative paths are relative to the working folder, as on the command line.

Works for any click command, typer's included: `CONFIG` is the option (``config: Path | None = CONFIG``).
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
import shlex
import sys
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import typer

from featcache.core.context import Invocation
from featcache.core.errors import FeatcacheError, OptionError

CONFIG_OPTION = "--config"
COMMAND_TABLE = "command"
CONFIG_HELP = (
    "TOML file of this command's options (keys as on the command line without the dashes, e.g. weight-decay = "
    "1e-4, and the positional argument by name); options given on the command line win. OUT/config.toml, which "
    "the command writes, reruns it."
)


def load_config(ctx: click.Context, param: click.Parameter, value: str | os.PathLike | None) -> Any:
    """``--config``'s callback (the option must be eager): the file's values become the command's defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    if not param.is_eager:
        raise TypeError(f"{CONFIG_OPTION} must be an eager option (is_eager=True) to set the other options")
    path = Path(value)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FeatcacheError(f"{CONFIG_OPTION} {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatcacheError(f"{CONFIG_OPTION} {path} is not a valid TOML file: {exc}") from None
    ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx, data, path)}
    return value


#: ``--config FILE.toml`` of a typer command (its value, the file, is passed on but needs no use).
CONFIG = typer.Option(None, CONFIG_OPTION, callback=load_config, is_eager=True, help=CONFIG_HELP)


def _is_config(param: click.Parameter) -> bool:
    return CONFIG_OPTION in param.opts


def option_key(param: click.Parameter) -> str:
    """The file's key of ``param``: its first ``--long`` name without the dashes, else its name with dashes."""
    long = [opt[2:] for opt in param.opts if opt.startswith("--")]
    return long[0] if long else param.name.replace("_", "-")


def _params_by_key(ctx: click.Context) -> dict[str, click.Parameter]:
    return {option_key(p): p for p in ctx.command.params if p.expose_value and p.name and not _is_config(p)}


def config_defaults(ctx: click.Context, data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The parsed TOML ``data`` of file ``path`` -> ``ctx.default_map`` entries (parameter name -> value);
    an unknown key or a wrong type -> `OptionError` naming the key and the file."""
    params = _params_by_key(ctx)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key == COMMAND_TABLE and isinstance(value, dict):
            continue
        param = params.get(key)
        if param is None:
            close = difflib.get_close_matches(key.replace("_", "-"), params, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the options are {', '.join(sorted(params))}"
            raise OptionError(f"{path}: {key} is not an option of this command; {hint}")
        try:
            defaults[param.name] = _from_toml(param, value)
            _check(ctx, param, defaults[param.name])
        except (TypeError, click.BadParameter, typer.BadParameter) as exc:
            message = exc.message if isinstance(exc, click.BadParameter | typer.BadParameter) else str(exc)
            raise OptionError(f"{path}: {key} = {_toml_value(value, strict=False)}: {message}") from None
    return defaults


def _kind(param: click.Parameter) -> str:
    """``bool``, ``int``, ``float``, ``text`` (free text, which the command line may give comma lists) or
    ``other`` (a path, a choice...): the TOML values ``param`` takes. Typer (0.26 on) has parameter classes of its
    own, which describe their type with a ``type_descriptor``; click's have a ``type``."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        if descriptor.is_path or descriptor.is_choice:
            return "other"
        annotation = typing.get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
        return {bool: "bool", int: "int", float: "float", str: "text"}.get(annotation, "other")
    for kind, name in (
        (click.types.BoolParamType, "bool"),
        (click.types.IntParamType, "int"),
        (click.types.FloatParamType, "float"),
    ):
        if isinstance(param.type, kind):
            return name
    return "text" if type(param.type) is click.types.StringParamType else "other"


def _check(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Convert ``value`` as the command will (ranges, choices, paths that must exist): its error, now."""
    if hasattr(param, "get_runtime_param"):  # typer's own parameters
        param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    else:
        param.type_cast_value(ctx, value)


def _from_toml(param: click.Parameter, value: Any) -> Any:
    """A TOML value -> what the command line would have given ``param`` (TypeError: the wrong type)."""
    kind = _kind(param)
    if param.multiple or param.nargs != 1:
        return [_scalar(kind, item) for item in (value if isinstance(value, list) else [value])]
    if isinstance(value, list):
        if kind != "text":
            raise TypeError("takes one value, not a list")
        return ",".join(str(_scalar(kind, item)) for item in value)
    return _scalar(kind, value)


def _scalar(kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise TypeError("takes true or false")
    if isinstance(value, bool):
        raise TypeError("takes no true or false")
    if kind == "int":
        if isinstance(value, int):
            return value
        raise TypeError("takes a whole number")
    if kind == "float":
        if isinstance(value, int | float):
            return float(value)
        raise TypeError("takes a number")
    if isinstance(value, str):
        return value
    if kind == "text" and isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    raise TypeError("takes text" + (", a number or a list of them" if kind == "text" else ""))


def resolved_config(
    ctx: click.Context, argv: Sequence[str] | None = None, resolved: Mapping[str, Any] | None = None
) -> str:
    """A TOML document of every option of ``ctx``'s command as resolved (defaults included; ``resolved``: values
    the command resolved itself, by parameter name, over ``ctx.params``; options left unset, None, are named in a
    comment), and the ``[command]`` table: the command line ``argv`` (default: this process's), the same as one
    line for a shell, and the working folder (relative paths are relative to it).

    ``--config`` of that file gives the same resolved values (the ``[command]`` table is skipped on reading).
    """
    params = {**ctx.params, **(resolved or {})}
    keys = _params_by_key(ctx)
    values = {key: _plain(params[p.name]) for key, p in keys.items() if params.get(p.name) is not None}
    unset = [key for key, p in keys.items() if params.get(p.name) is None]
    argv = list(sys.argv if argv is None else argv)
    command = {"argv": argv, "line": shlex.join(argv), "cwd": os.getcwd()}
    header = f"# The resolved options of featcache {ctx.info_name}; rerun with {CONFIG_OPTION} THIS_FILE.\n"
    if unset:
        header += f"# Not set, their defaults resolved by the command: {', '.join(unset)}.\n"
    return header + dumps_toml({**values, COMMAND_TABLE: command})


def invocation(ctx: click.Context, **resolved: Any) -> Invocation:
    """The command line that started ``ctx``'s command (as `featcache.cli.main` got it) and its `resolved_config`,
    for the command to write beside its outputs; ``resolved``: values the command resolved itself."""
    from featcache.cli.app import state

    argv = state.argv or ("featcache", *sys.argv[1:])
    return Invocation(tuple(argv), resolved_config(ctx, argv, resolved))


def _plain(value: Any) -> Any:
    """A parameter's value -> TOML's types (paths and enumerations as text, tuples as lists)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str):
        return value
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in text) + '"'


def _toml_value(value: Any, strict: bool = True) -> str:
    """``value`` (str, int, float incl. inf and nan, bool, lists of them) as TOML; ``strict`` False: anything else
    as Python writes it (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, strict) for v in value) + "]"
    if strict:
        raise TypeError(f"{type(value).__name__} has no TOML form here: {value!r}")
    return repr(value)


def dumps_toml(table: Mapping[str, Any]) -> str:
    """``table`` as a TOML document: its values first, then its sub-tables (one level) as ``[name]`` sections;
    None values left out."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None and not isinstance(v, dict)
    ]
    for name, sub in table.items():
        if isinstance(sub, dict):
            lines += ["", f"[{_toml_key(name)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sub.items() if v is not None]
    return "\n".join(lines) + "\n"


def reporting(ctx: click.Context, track: Sequence[str], *, device: str | None, **resolved: Any) -> dict[str, Any]:
    """`featcache.cli.app.context`'s ``track`` (``--track``, else ``FEATCACHE_TRACK``) and ``invocation`` of a
    command that trains: the options as resolved (``resolved``: values the command resolved itself), the trackers'
    names and, when not auto, the device (the command's ``--device``, else the global one) included."""
    from featcache.cli.app import state
    from featcache.track import parse_track

    names = parse_track(track)
    chosen = device or state.device
    resolved = {**resolved, "track": list(names), "device": None if chosen == "auto" else chosen}
    return {"track": names, "invocation": invocation(ctx, **resolved)}
