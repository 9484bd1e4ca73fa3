"""--config FILE.toml for any click/typer command, and `resolved_config`, the file that reruns a command."""

from __future__ import annotations

import enum
import math
import tomllib
from pathlib import Path

import click
import pytest
import typer
from click.testing import CliRunner

from featcache.cli.config_file import CONFIG, dumps_toml, load_config, resolved_config
from featcache.core.errors import FeatcacheError, OptionError
from featcache.results.records import RunResults
from tests.helpers import one_line_error

seen: dict = {}
app = typer.Typer(add_completion=False)


class Dtype(enum.StrEnum):
    float16 = "float16"
    float32 = "float32"


@app.command()
def train(
    ctx: typer.Context,
    store: str = typer.Argument(..., help="A store."),
    size: int = typer.Option(..., min=1),
    weight_decay: str = typer.Option("1e-4", help="A number or a comma-separated list."),
    seeds: str = typer.Option("0,1,2"),
    clip: float = typer.Option(math.inf),
    epochs: int | None = typer.Option(None),
    model_kwargs: list[str] = typer.Option([], "--model-kwargs"),
    grouped: bool | None = typer.Option(None, "--grouped/--no-grouped"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Path = typer.Option(Path("runs/x")),
    dtype: Dtype = typer.Option(Dtype.float16),
    config: Path | None = CONFIG,
) -> None:
    seen["params"] = {k: v for k, v in ctx.params.items() if k != "config"}
    seen["toml"] = resolved_config(ctx, argv=["featcache", "train", *ctx.args])


def invoke(*args: object) -> dict:
    """Run the command; return the resolved parameters (raises what the command raised)."""
    seen.clear()
    result = CliRunner().invoke(typer.main.get_command(app), [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return seen["params"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.toml"
    path.write_text(text)
    return path


def test_the_file_gives_options_by_their_command_line_names_and_the_argument_by_its_name(tmp_path):
    config = write(
        tmp_path,
        'store = "a.zarr"\nsize = 40\nweight-decay = [1e-4, 1e-3]\nseeds = "0-4"\nclip = 1\n'
        'model-kwargs = ["depth=2", "heads=4"]\ngrouped = false\noverwrite = true\nout = "runs/y"\ndtype = "float32"\n',
    )
    params = invoke("--config", config)
    assert params == {
        "store": "a.zarr",
        "size": 40,
        "weight_decay": "0.0001,0.001",
        "seeds": "0-4",
        "clip": 1.0,
        "epochs": None,
        "model_kwargs": ["depth=2", "heads=4"],
        "grouped": False,
        "overwrite": True,
        "out": Path("runs/y"),
        "dtype": "float32",
    }


@pytest.mark.parametrize(
    ("toml", "value"),
    [('weight-decay = "1e-4,2e-4"', "1e-4,2e-4"), ("weight-decay = 2e-4", "0.0002"), ("weight-decay = [3]", "3")],
)
def test_a_comma_list_option_takes_text_a_number_or_a_list(tmp_path, toml, value):
    assert invoke("--config", write(tmp_path, f'store = "s"\nsize = 1\n{toml}\n'))["weight_decay"] == value


def test_the_command_line_wins_over_the_file(tmp_path):
    config = write(tmp_path, 'store = "a.zarr"\nsize = 40\nseeds = [0, 1]\ngrouped = true\n')
    params = invoke("b.zarr", "--size", "10", "--no-grouped", "--config", config)
    assert (params["store"], params["size"], params["seeds"], params["grouped"]) == ("b.zarr", 10, "0,1", False)


def test_resolved_config_reruns_to_the_same_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = invoke("a.zarr", "--size", "10", "--weight-decay", "1e-4,1e-3", "--model-kwargs", "depth=2", "--grouped")
    document = seen["toml"]
    parsed = tomllib.loads(document)
    assert parsed["command"] == {"argv": ["featcache", "train"], "line": "featcache train", "cwd": str(tmp_path)}
    assert "epochs" not in parsed and math.isinf(parsed["clip"]) and parsed["model-kwargs"] == ["depth=2"]
    assert "# Not set, their defaults resolved by the command: epochs.\n" in document
    (tmp_path / "config.toml").write_text(document)
    assert invoke("--config", tmp_path / "config.toml") == first
    assert seen["toml"] == document


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("sise = 10", "sise is not an option of this command; did you mean size?"),
        ("colour = 1", "colour is not an option of this command; the options are clip, dtype, epochs, grouped, "),
        ('size = "10"', 'size = "10": takes a whole number'),
        ("size = 1.5", "size = 1.5: takes a whole number"),
        ("size = 0", "size = 0: Input should be greater than or equal to 1"),
        ("overwrite = 1", "overwrite = 1: takes true or false"),
        ("clip = true", "clip = true: takes no true or false"),
        ("size = [1, 2]", "size = [1, 2]: takes one value, not a list"),
        ('dtype = "int8"', "dtype = \"int8\": Value error, 'int8' is not one of 'float16', 'float32'."),
        ("seeds = [[0]]", "seeds = [[0]]: takes text, a number or a list of them"),
        ("[other]\nx = 1", "other is not an option of this command"),
    ],
)
def test_an_unknown_key_or_a_wrong_type_is_one_line_naming_the_key_and_the_file(tmp_path, toml, message):
    config = write(tmp_path, f'store = "s"\n{toml}\n')
    with pytest.raises(OptionError) as info:
        invoke("--config", config)
    assert str(info.value).startswith(f"{config}: {message}") and "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "fragment"), [(None, "No such file"), ("size = ", "is not a valid TOML file")])
def test_a_missing_or_broken_file_is_one_line(tmp_path, text, fragment):
    config = tmp_path / "experiment.toml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(FeatcacheError) as info:
        invoke("--config", config)
    assert str(info.value).startswith(f"--config {config}") and fragment in str(info.value)


def test_a_plain_click_command_takes_config_too(tmp_path):
    @click.command()
    @click.argument("data")
    @click.option("--batch-size", type=int, default=8)
    @click.option("--config", callback=load_config, is_eager=True, expose_value=False)
    def extract(data: str, batch_size: int) -> None:
        click.echo(f"{data} {batch_size}")

    config = write(tmp_path, 'data = "images"\nbatch-size = 32\n')
    assert CliRunner().invoke(extract, ["--config", str(config)]).output == "images 32\n"
    assert CliRunner().invoke(extract, ["--config", str(config), "other"]).output == "other 32\n"


def test_dumps_toml_writes_what_tomllib_reads_back():
    table = {
        "text": 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f é',
        "key with space": 1,
        "n": -3,
        "x": 1e-05,
        "big": 1e300,
        "inf": math.inf,
        "minus-inf": -math.inf,
        "flag": False,
        "mixed": [1, 2.5, "a", True, []],
        "none": None,
        "command": {"argv": ["featcache", "train", "--lr", "1e-4"], "cwd": "/tmp"},
    }
    parsed = tomllib.loads(dumps_toml({**table, "nan": math.nan}))
    assert math.isnan(parsed.pop("nan"))
    assert parsed == {k: v for k, v in table.items() if v is not None}


# The commands themselves, through the command line.

MICRO_COMPARE = "--sizes 4 --seeds 0 --modes F,C --epochs 2 --batch-size 2 --val-size 2 --lr 0.01".split()


def test_compare_e2e_config_toml_reruns_the_comparison(micro_store, tmp_path, cli):
    first = cli("--device", "cpu", "compare-e2e", micro_store, *MICRO_COMPARE, "--out", tmp_path / "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    written = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert written["command"]["argv"][:3] == ["featcache", "--device", "cpu"] and written["device"] == "cpu"
    assert written["modes"] == "F,C" and written["grid-modes"] == "C" and written["track"] == []
    again = cli("compare-e2e", "--config", tmp_path / "a" / "config.toml", "--out", tmp_path / "b", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    rerun = tomllib.loads((tmp_path / "b" / "config.toml").read_text())
    assert rerun.pop("command")["argv"][1:3] == ["compare-e2e", "--config"] and rerun.pop("out").endswith("b")
    assert {k: v for k, v in written.items() if k not in ("command", "out")} == rerun
    for run in ("F/size-4/seed-0", "C/size-4/seed-0"):
        a, b = (RunResults.read(tmp_path / x / "runs" / run / "results.json") for x in "ab")
        assert (a.test, a.history.to_json()) == (b.test, b.history.to_json())


@pytest.mark.parametrize(
    ("command", "toml", "message"),
    [
        ("train-decoder", 'store = "s"\nsise = 10', "sise is not an option of this command; did you mean size?"),
        ("compare-e2e", 'store = "s"\nseeds = [[0]]', "seeds = [[0]]: takes text, a number or a list of them"),
        ("pretrain", 'data = "d"\nepochs = 1.5', "epochs = 1.5: takes a whole number"),
        ("extract", 'data = "d"\noverwrite = 1', "overwrite = 1: takes true or false"),
    ],
)
def test_a_bad_key_of_each_command_is_one_line_naming_the_key_and_the_file(tmp_path, cli, command, toml, message):
    config = write(tmp_path, toml + "\n")
    one_line_error(cli(command, "--config", config), f"{config}: {message}", code=2)


def test_track_comes_from_the_option_or_the_environment_and_is_checked(micro_store, tmp_path, cli, monkeypatch):
    one_line_error(cli("train-decoder", micro_store, "--size", "4", "--track", "neptune"), "--track neptune", code=2)
    monkeypatch.setenv("FEATCACHE_TRACK", "tensorboard")
    options = ("--size", "4", "--seeds", "0", "--epochs", "1", "--batch-size", "2", "--val-size", "2")
    result = cli("--device", "cpu", "train-decoder", micro_store, *options, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["track"] == ["tensorboard"]
    assert sorted(p.name for p in (tmp_path / "run" / "tensorboard").iterdir()) == ["seed-0", "train-decoder"]


def test_pretrain_writes_its_configuration_beside_the_checkpoint(synth_root, tmp_path, cli):
    options = "--arch vit_micro --init random --epochs 1 --batch-size 4 --image-size 32".split()
    result = cli("--device", "cpu", "pretrain", synth_root, *options, "--out", tmp_path / "enc.pt")
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((tmp_path / "enc_config.toml").read_text())
    assert (written["data"], written["epochs"], written["image-size"]) == (str(synth_root), 1, 32)
    assert not (tmp_path / "config.toml").exists() and not (tmp_path / "enc_tracking.json").exists()
