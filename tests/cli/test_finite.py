"""featcache.cli.finite: nan and inf are usage errors (exit 2) for every numeric option of every command, found by
introspecting the commands, so an option added later is covered without a test of its own."""

import typing

import pytest

from featcache.cli.app import command
from tests.helpers import one_line_error, run_main


def numeric_options() -> list[tuple[str, str, str]]:
    """(command, option, ``int``, ``float`` or ``range``) of every numeric parameter (lists of numbers too) of every
    command; ``range``: a float with ``min`` or ``max``, which typer checks itself."""
    found = []
    for name, sub in command().commands.items():
        for param in sub.params:
            annotation = param.type_descriptor.annotation
            kinds = {k for k in (annotation, *typing.get_args(annotation)) if k in (int, float)}
            if kinds:
                kind = kinds.pop().__name__
                ranged = getattr(param, "min", None) is not None or getattr(param, "max", None) is not None
                found.append((name, param.opts[0], "range" if kind == "float" and ranged else kind))
    return found


NUMERIC = numeric_options()


def test_the_introspection_finds_the_numeric_options():
    floats = {(c, o) for c, o, kind in NUMERIC if kind == "float"}
    assert {("pretrain", "--lr"), ("train-decoder", "--checkpoint-seconds"), ("extract", "--val-fraction")} <= floats
    assert ("evaluate", "--threshold", "range") in NUMERIC and ("train-decoder", "--epochs", "int") in NUMERIC


@pytest.mark.parametrize(("name", "option", "kind"), NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_nan_and_inf_are_usage_errors(capsys, name, option, kind):
    """Given first, the option is read before any missing argument is: its refusal is what the command says."""
    for value in ("nan", "inf", "-inf"):
        result = run_main(capsys, name, option, value)
        assert result.returncode == 2, (value, result.stderr)
        assert "Traceback" not in result.stderr
        if kind == "float":  # ints and ranges: typer's own usage error
            one_line_error(result, f"{option} {value}: not a finite number", code=2)


def test_finite_numbers_pass(capsys):
    finite = run_main(capsys, "evaluate", "--threshold", "0.25", "no-such-dir", "b")
    assert finite.returncode == 1 and "does not exist" in finite.stderr  # past the options, to the folders
    late = run_main(capsys, "pretrain", "no-such-data", "--out", "e.pt", "--noise-std", "inf")
    one_line_error(late, "--noise-std inf: not a finite number", code=2)  # given last, still before any work
