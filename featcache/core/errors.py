"""One-line user-facing errors (exit code 1; usage errors 2), and the option checks that raise them."""


class FeatcacheError(Exception):
    """A user-facing failure: bad input, a refused store, a missing file.

    The message is one line that names the file or option at fault and the fix.
    """


class BadFileError(FeatcacheError):
    """An image or mask file that cannot be read (`featcache extract --skip-bad` can leave such files out)."""


class OptionError(FeatcacheError):
    """An option value that can never be valid (not one of the choices, out of range): a usage error, exit code 2."""


def check_choice(option: str, value: str, choices) -> None:
    """Refuse ``value`` for ``option`` unless it is one of ``choices`` (listed in the message)."""
    if value not in choices:
        raise OptionError(f"{option} {value} is not one of {', '.join(choices)}")


def check_at_least(option: str, value: float | None, minimum: float) -> None:
    """Refuse ``value`` for ``option`` when it is below ``minimum`` (None: not given, nothing to check)."""
    if value is not None and not value >= minimum:
        raise OptionError(f"{option} {value} must be {'at least 1' if minimum == 1 else f'{minimum} or more'}")
