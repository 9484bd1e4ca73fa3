"""The command line: a thin layer that parses each command's options into one configuration, calls one library
function and prints; `app` is the typer application, `main` its entry point (one-line errors, exit codes)."""

from featcache.cli import data_commands, results_commands, select_commands, store_commands, train_commands
from featcache.cli.app import app, main

#: Every command, in the order ``featcache --help`` lists them: the pipeline's order.
COMMANDS = (
    ("synth", data_commands.synth),
    ("extract", store_commands.extract),
    ("select", select_commands.select),
    ("info", store_commands.info),
    ("verify", store_commands.verify),
    ("pretrain", train_commands.pretrain),
    ("train-decoder", train_commands.train_decoder),
    ("compare-e2e", train_commands.compare_e2e),
    ("predict", results_commands.predict),
    ("evaluate", results_commands.evaluate),
    ("demo", train_commands.demo),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)

__all__ = ["COMMANDS", "app", "main"]
