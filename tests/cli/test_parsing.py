"""featcache.cli.parsing: the command line's list options, each parsed once; what cannot be valid is a usage error."""

import pytest

from featcache.cli.parsing import parse_layers, parse_list, parse_model_kwargs, parse_numbers, parse_seeds
from featcache.core.errors import OptionError


def test_reversed_seed_range_and_bad_list_items_say_so():
    assert parse_seeds("0,3-5") == [0, 3, 4, 5]
    with pytest.raises(OptionError, match=r"--seeds '5-2': the range 5-2 runs backwards; write it 2-5"):
        parse_seeds("5-2")
    with pytest.raises(OptionError, match=r"--sizes '10,x0': 'x0' is not a whole number"):
        parse_list("10,x0", "--sizes")


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0,1,2", [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), (" 7 , 2 ", [7, 2]), ("3,0-1,", [3, 0, 1]), ("5-5", [5])],
)
def test_seeds_lists_and_ranges(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a", r"--seeds 'a' is not a list like 0,1,2 or a range like 0-4"),
        ("1-x", r"--seeds '1-x' is not a list like 0,1,2"),
        ("1.5", r"--seeds '1.5' is not a list like"),
        ("", r"--seeds '' must name distinct non-negative seeds, e.g. 0,1,2"),
        ("1,1", r"--seeds '1,1' must name distinct non-negative seeds"),
        ("0-2,2", r"--seeds '0-2,2' must name distinct"),
        ("-1", r"--seeds '-1' must name distinct non-negative seeds"),
    ],
)
def test_seeds_that_cannot_be_valid(text, why):
    with pytest.raises(OptionError, match=f"^{why}"):
        parse_seeds(text)


def test_numbers_are_floats_told_apart_by_their_folder_names():
    assert parse_numbers("1e-4,2e-4, 0.5", "--lr") == [1e-4, 2e-4, 0.5]
    for text in ("1e-4,0.0001", "2e-4,2.0000001e-4"):  # one value twice, or the same to 6 significant digits
        with pytest.raises(OptionError, match=rf"^--lr '{text}' names a value twice \(values are told apart to 6"):
            parse_numbers(text, "--lr")
    parse_numbers("2e-4,2.00001e-4", "--lr")  # 6 significant digits apart: two folders
    with pytest.raises(OptionError, match=r"^--weight-decay '1e-4,x': 'x' is not a number; write a comma-sep"):
        parse_numbers("1e-4,x", "--weight-decay")


def test_lists_drop_empty_items_and_name_the_one_they_cannot_take():
    assert parse_list("10,,20, ", "--sizes") == (10, 20)
    assert parse_list("a,b", "--modes", str) == ("a", "b")
    assert parse_list("0.5", "--x", float) == (0.5,)
    with pytest.raises(OptionError, match=r"^--sizes '1\.5': '1\.5' is not a whole number; write a comma-separated"):
        parse_list("1.5", "--sizes")
    with pytest.raises(OptionError, match=r"^--sizes is empty; give a comma-separated list$"):
        parse_list(" , ", "--sizes")


def test_layers():
    assert parse_layers("3,6,9,12") == (3, 6, 9, 12)
    assert parse_layers("-4, -1") == (-4, -1)
    assert parse_layers("2,2") == (2, 2)  # duplicates are resolve_layers' to merge against the model
    for text in ("0", "1,0", ""):
        with pytest.raises(OptionError, match=rf"^--layers '{text}': give block numbers from 1 \(or -1 for the last\)"):
            parse_layers(text)
    with pytest.raises(OptionError, match=r"^--layers 'last' is not a list of block numbers like -1 or 3,6,9,12$"):
        parse_layers("last")


def test_model_kwargs_are_python_literals_or_strings():
    kwargs = parse_model_kwargs(
        ["depth=2", "embed_dim=32", "drop=0.1", "act_layer=gelu", "qkv_bias=False", "img_size=(56, 56)", "name="]
    )
    assert kwargs == {
        "depth": 2,
        "embed_dim": 32,
        "drop": 0.1,
        "act_layer": "gelu",
        "qkv_bias": False,
        "img_size": (56, 56),
        "name": "",
    }
    assert parse_model_kwargs(["depth=2", "depth=3"]) == {"depth": 3} and parse_model_kwargs([]) == {}
    for item in ("depth", "2depth=2", "=2", "a-b=1"):
        with pytest.raises(OptionError, match=rf"^--model-kwargs '{item}' is not KEY=VALUE, e\.g\. depth=6$"):
            parse_model_kwargs([item])


@pytest.mark.parametrize("text", ["nan", "1e-4,inf", "-inf"])
def test_a_number_without_a_folder_name_is_a_usage_error(text):
    # `number_name` has no name for nan or inf ("nan".split("e") is one part): `--lr nan` must be a usage error
    # naming the option, not an unpacking ValueError.
    with pytest.raises(OptionError, match=r"^--lr "):
        parse_numbers(text, "--lr")
