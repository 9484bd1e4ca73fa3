"""``python -m featcache`` (and ``torchrun -m featcache``) runs the command line.

Ctrl-C is made to work before the heavy imports (torch alone takes seconds): a process started with
``cmd &`` from a script inherits SIGINT ignored and would otherwise never stop, and a SIGINT during
the imports would otherwise end in a traceback.
"""

import signal
import sys


def run() -> None:
    """The ``featcache`` console command: Ctrl-C ends it with "interrupted" and exit code 130 at any moment."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from featcache.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    try:
        main()
    finally:
        # The command has ended (`main` said how): a Ctrl-C while the interpreter shuts down (threads, workers)
        # would only kill the process by the signal, its work done and nothing said.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    run()
