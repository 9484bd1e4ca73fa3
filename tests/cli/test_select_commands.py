"""The command line of label selection: `featcache select` prints its table and writes its files, and every bad
input of issue 23 (a budget beyond the split, a store without a training split, an unknown strategy, selection
files with unknown ids or ids of another split) ends in one line naming the fix."""

import json

from featcache.store import FeatureStore
from tests.helpers import SMALL_SWEEP, one_line_error, table_rows
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


def training_ids(store_path, split="train") -> list[str]:
    with FeatureStore.open(store_path) as store:
        return [store.ids[i] for i in store.indices(split)]


def test_train_decoder_and_compare_e2e_train_on_selections(cli, micro_store, tmp_path):
    out = tmp_path / "td"
    result = cli("train-decoder", micro_store, *SMALL_SWEEP, "--selection", "kcenter", "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["selection"] == "kcenter"
    report = tmp_path / "cmp"
    options = ("--modes", "C", "--sizes", "6,3", "--seeds", "0,1", "--epochs", "2", "--batch-size", "3")
    result = cli("compare-e2e", micro_store, *options, "--val-size", "3", "--selections", "kcenter", "--out", report)
    assert result.returncode == 0, result.stderr
    rows = [row for row in table_rows(result.stdout) if len(row) == 6]
    assert [row[:3] for row in rows] == [[s, "C", n] for s in ("6", "3") for n in ("random", "kcenter")]
    assert "## Label selection against random" in (report / "report.md").read_text()


def test_a_selection_file_with_unknown_ids(cli, micro_store, tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join([*training_ids(micro_store)[:5], "ISIC_9999999"]))
    result = cli("train-decoder", micro_store, *SMALL_SWEEP, "--selection-file", path, "--out", tmp_path / "out")
    one_line_error(result, f"--selection-file {path}: 1 id is not in", "ISIC_9999999; list ids of its training split")


def test_a_selection_file_with_ids_of_another_split(cli, micro_store, tmp_path):
    path = tmp_path / "ids.txt"
    val = training_ids(micro_store, "val")[0]
    path.write_text("\n".join([*training_ids(micro_store)[:5], val]))
    result = cli("compare-e2e", micro_store, "--sizes", "6", "--selection-file", path, "--out", tmp_path / "out")
    one_line_error(result, f"{val} is in the validation split", "choose training images only")


def test_an_unknown_strategy_for_training(cli, micro_store, tmp_path):
    result = cli("train-decoder", micro_store, *SMALL_SWEEP, "--selection", "coreset", "--out", tmp_path / "out")
    one_line_error(result, "--selection coreset is not one of random, kcenter, typiclust, probcover", code=2)
    result = cli("compare-e2e", micro_store, "--selections", "random,coreset", "--out", tmp_path / "out")
    one_line_error(result, "--selections random,coreset: choose from random, kcenter, typiclust, probcover", code=2)
