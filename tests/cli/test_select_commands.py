"""The command line of label selection: `featcache select` prints its table and writes its files, and every bad
input of issue 23 (a budget beyond the split, a store without a training split, an unknown strategy, selection
files with unknown ids or ids of another split) ends in one line naming the fix."""

from tests.helpers import one_line_error, table_rows
from tests.selection.test_from_store import store_without_training_split


def test_select_prints_the_chosen_images_and_writes_its_files(cli, micro_store, tmp_path):
    out = tmp_path / "ids.txt"
    result = cli("select", micro_store, "--budget", "4", "--strategy", "kcenter", "--seed", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    ids = out.read_text().splitlines()
    assert [row[1] for row in table_rows(result.stdout)] == ids and len(ids) == 4
    assert f"manifest {out}.json" in result.stdout
    for name in ("ids.txt.json", "ids.txt.pca.png", "ids.txt.sheet.png"):
        assert (tmp_path / name).is_file()


def test_select_names_its_default_file_after_the_request(cli, micro_store, tmp_path):
    result = cli("select", micro_store, "--budget", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "micro-select-random-n3-seed0.txt").read_text().count("\n") == 3


def test_a_budget_beyond_the_training_split(cli, micro_store, tmp_path):
    result = cli("select", micro_store, "--budget", "13", "--out", tmp_path / "ids.txt")
    one_line_error(result, "--budget 13 is larger than the training split", "(12 images); ask for at most 12")


def test_a_store_without_a_training_split(cli, tmp_path):
    store = store_without_training_split(tmp_path / "no-train.zarr")
    result = cli("select", store, "--budget", "2", "--out", tmp_path / "ids.txt")
    one_line_error(result, "has no training split to choose from", "extract a dataset with training images")


def test_an_unknown_strategy(cli, micro_store, tmp_path):
    result = cli("select", micro_store, "--budget", "2", "--strategy", "coreset", "--out", tmp_path / "ids.txt")
    one_line_error(result, "--strategy coreset is not one of random, kcenter, typiclust, probcover", code=2)
