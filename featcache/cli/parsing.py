"""The command line's list options: seeds (``0,1,2``, ``0-4``), numbers, comma-separated lists, block numbers and
``KEY=VALUE`` model options, each parsed once into the values a configuration holds."""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence

from featcache.core.errors import OptionError
from featcache.results.stats import number_name


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (or both, ``"0,3-5"``) -> a list of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if 0 <= hi < lo:
                    raise OptionError(f"--seeds {text!r}: the range {part} runs backwards; write it {hi}-{lo}")
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise OptionError(f"--seeds {text!r} is not a list like 0,1,2 or a range like 0-4") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise OptionError(f"--seeds {text!r} must name distinct non-negative seeds, e.g. 0,1,2")
    return seeds


def parse_numbers(text: str, option: str) -> list[float]:
    """``"1e-4,2e-4"`` -> distinct numbers whose folder names differ too (`number_name`)."""
    values = list(parse_list(text, option, float))
    for value in values:
        if not math.isfinite(value):
            raise OptionError(f"{option} {text!r}: {value} is not a finite number; give numbers like 1e-4,2e-4")
    names = [number_name(v) for v in values]
    if len(set(names)) != len(names):
        raise OptionError(f"{option} {text!r} names a value twice (values are told apart to 6 significant digits)")
    return values


def parse_list(text: str, option: str, kind: type = int) -> tuple:
    """``"a,b,c"`` -> a tuple of ``kind`` values (empty items dropped); names the item ``kind`` cannot take."""
    values = []
    for item in filter(None, (v.strip() for v in text.split(","))):
        try:
            values.append(kind(item))
        except ValueError:
            what = {int: "a whole number", float: "a number"}.get(kind, f"a {kind.__name__}")
            raise OptionError(f"{option} {text!r}: {item!r} is not {what}; write a comma-separated list") from None
    if not values:
        raise OptionError(f"{option} is empty; give a comma-separated list")
    return tuple(values)


def parse_layers(text: str) -> tuple[int, ...]:
    """``"3,6,9,12"`` or ``"-4,-3,-2,-1"`` -> a tuple of block numbers (checked against a model by `resolve_layers`)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OptionError(f"--layers {text!r} is not a list of block numbers like -1 or 3,6,9,12") from None
    if not values or 0 in values:
        raise OptionError(f"--layers {text!r}: give block numbers from 1 (or -1 for the last), e.g. 3,6,9,12")
    return values


def parse_model_kwargs(items: Sequence[str]) -> dict:
    """``["depth=2", "embed_dim=32"]`` -> ``{"depth": 2, "embed_dim": 32}``, values read as Python literals
    (strings where they are not one), as timm's own ``--model-kwargs`` does."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise OptionError(f"--model-kwargs {item!r} is not KEY=VALUE, e.g. depth=6")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
