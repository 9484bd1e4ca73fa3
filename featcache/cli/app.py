"""The command line: each command parses its options and calls one library function."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import typer

from featcache.core.context import Context, Invocation
from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.runtime import err_console, resolve_device

app = typer.Typer(
    name="featcache",
    help="Few-shot segmentation with a frozen encoder: features computed once, decoders trained from a store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fold_long_words_in_help() -> None:
    """typer cuts a word of an option's help longer than the help column with "…" (at 80 columns an example such
    as ``timm:vit_base_patch14_dinov2.lvd142m``); folded onto the next line instead, it stays whole."""
    from rich.text import Text
    from typer import rich_utils

    make = getattr(rich_utils, "_make_rich_text", None)
    if make is None or getattr(make, "folds", False):
        return

    def folded(**kwargs):
        text = make(**kwargs)
        if isinstance(text, Text):
            text.overflow = "fold"
        return text

    folded.folds = True
    rich_utils._make_rich_text = folded


_fold_long_words_in_help()


@dataclass
class GlobalOptions:
    device: str = "auto"
    debug: bool = False
    argv: tuple[str, ...] = ()  # the command line as typed, ``featcache`` first


state = GlobalOptions()

#: train-decoder's and compare-e2e's switch for `featcache.train.graphs`.
CUDA_GRAPHS = typer.Option(
    True,
    "--cuda-graphs/--no-cuda-graphs",
    help="On CUDA, replay each training epoch and validation pass as a CUDA graph after the first (same "
    "results, far fewer launches); --no-cuda-graphs runs every step eagerly, e.g. to rule graphs out.",
)


def context(
    device: str | None,
    *,
    ranks: bool = False,
    cuda_graphs: bool = True,
    checkpoint_seconds: float = 60.0,
    track: Sequence[str] = (),
    invocation: Invocation | None = None,
) -> Context:
    """A command's execution context, resolved once: its own ``--device`` or else the global one; with ``ranks``,
    this torchrun rank's (a command that divides its work among ranks); ``track``, ``invocation``: where its runs
    are reported and the command line that started it (`Context`)."""
    return Context.resolve(
        device or state.device,
        cuda_graphs=cuda_graphs,
        checkpoint_seconds=checkpoint_seconds,
        ranks=ranks,
        track=track,
        invocation=invocation,
    )


@app.callback()
def _global(
    device: str = typer.Option(
        "auto", help="auto | cpu | cuda | cuda:N; commands with their own --device override it."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    state.debug = debug
    resolve_device(device)
    state.device = device


def command() -> typer.core.TyperGroup:
    """The click command of `app`, every float option refusing non-finite numbers (`finite_numbers`)."""
    from featcache.cli.finite import finite_numbers

    return finite_numbers(typer.main.get_command(app))


def _restore_ctrl_c() -> None:
    """Make SIGINT raise KeyboardInterrupt, even when it was inherited ignored (``cmd &`` in a script)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr; exit 1 for bad input, 2 for usage errors (typer's and option values).

    Ctrl-C: "interrupted" and exit code 130.
    """
    state.argv = ("featcache", *(sys.argv[1:] if argv is None else argv))
    try:
        _restore_ctrl_c()
        # Outside standalone mode, typer turns Ctrl-C into a returned exit code (130), not an exception.
        code = command()(args=argv, standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted", style="red")
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: typer's message and exit code 2
        exc.show()
        sys.exit(exc.exit_code)
    except FeatcacheError as exc:
        if state.debug:
            traceback.print_exc()
        err_console.print(f"error: {exc}", style="red", soft_wrap=True, highlight=False, markup=False)
        sys.exit(2 if isinstance(exc, OptionError) else 1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C would interrupt the clean-up, noisily
        err_console.print("interrupted", style="red")
        sys.exit(130)
    except Exception as exc:
        if state.debug:
            traceback.print_exc()
        err_console.print(
            f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            style="red",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        sys.exit(1)
