"""Non-finite numbers refused for every numeric option, in one place: every parameter of every command gets a
callback (`finite_numbers`) that refuses a float value that is ``nan`` or infinite (or a list or tuple holding
one), so an option added later is covered without code of its own. Typer converts ``nan`` and ``inf`` to floats
and lets ``nan`` past a range; here they are usage errors (`OptionError`, exit 2), as ``--lr nan`` is for the list
options (`featcache.cli.parsing`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from featcache.core.errors import OptionError


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, list | tuple) and any(_non_finite(v) for v in value)


def _refusing_non_finite(callback: Callable | None) -> Callable:
    """A parameter callback that refuses a non-finite value, then calls ``callback`` (the parameter's own, if any)."""

    def check(ctx, param, value):
        if _non_finite(value):
            option = param.opts[0] if getattr(param, "opts", None) else param.name
            raise OptionError(f"{option} {value}: not a finite number; give a number such as 0.5 or 2e-4")
        return callback(ctx, param, value) if callback is not None else value

    check.refuses_non_finite = True
    return check


def finite_numbers(command: Any) -> Any:
    """``command`` (a typer/click command or group; every subcommand too) with each parameter refusing non-finite
    numbers; returned."""
    for param in command.params:
        if not getattr(param.callback, "refuses_non_finite", False):
            param.callback = _refusing_non_finite(param.callback)
    for sub in getattr(command, "commands", {}).values():
        finite_numbers(sub)
    return command
