"""The one exception type the command line turns into a single line on stderr and exit code 1."""


class FeatcacheError(Exception):
    """A user-facing failure: bad input, a refused store, a missing file.

    The message is one line that names the file or option at fault and the fix.
    """


class BadFileError(FeatcacheError):
    """An image or mask file that cannot be read (`featcache extract --skip-bad` can leave such files out)."""


class OptionError(FeatcacheError):
    """An option value that can never be valid (not one of the choices, out of range): a usage error, exit code 2."""
