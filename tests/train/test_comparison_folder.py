"""featcache.train.comparison_folder: a compare-e2e folder keeps its configuration; another is refused before
anything is written, the same one resumes, --overwrite replaces."""

import json
import shutil

import pytest

import featcache.train.compare
from featcache.core.errors import FeatcacheError
from featcache.train import compare_e2e
from featcache.train.comparison_folder import CASE_MASKS, COMPARISON_FILE
from tests.helpers import CPU, one_line_error, quick_compare


def small(store, out, **overrides):
    """C alone at sizes 8 and 4, two seeds, one epoch: a sweep in seconds."""
    return quick_compare(store, out, **{"modes": ("C",), "epochs": 1, **overrides})


def snapshot(folder) -> dict:
    """Every file of ``folder`` with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(micro_store, tmp_path_factory):
    """A finished sweep, written once; tests that change it take a copy (`sweep`)."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    compare_e2e(small(micro_store, out), ctx=CPU)
    return out


@pytest.fixture
def sweep(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "sweep")
    return tmp_path / "sweep"


def test_the_configuration_is_kept_in_the_folder(finished, micro_store):
    sweep = finished
    kept = json.loads((sweep / COMPARISON_FILE).read_text())
    assert kept["configuration"]["seeds"] == [0, 1] and kept["configuration"]["modes"] == ["C"]
    assert kept["configuration"]["store"] == str(micro_store) and kept["configuration"]["device_type"] == "cpu"
    assert len(kept["environment"]["load_start"]) == len(kept["environment"]["load_end"]) == 3
    assert (sweep / "runs" / "C" / "size-8" / "seed-0" / CASE_MASKS).is_file()  # the case seed's masks


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"seeds": (0, 1, 2)}, "seeds [0, 1] -> [0, 1, 2]"),
        ({"modes": ("F", "C")}, 'modes ["C"] -> ["F", "C"]'),
        ({"epochs": 2}, "epochs 1 -> 2"),
        ({"sizes": (8,)}, "sizes [8, 4] -> [8]"),
    ],
)
def test_another_configuration_is_refused_and_the_earlier_sweep_left_untouched(finished, micro_store, change, said):
    sweep = finished
    before = snapshot(sweep)
    with pytest.raises(FeatcacheError, match="holds a compare-e2e sweep of another configuration") as refused:
        compare_e2e(small(micro_store, sweep, **change), ctx=CPU)
    message = str(refused.value)
    assert said.replace('"', "'") in message.replace('"', "'") and "--out" in message and "--overwrite" in message
    assert snapshot(sweep) == before


def test_another_store_is_refused(finished, micro_store, tmp_path):
    other = tmp_path / "other.zarr"
    shutil.copytree(micro_store, other)
    with pytest.raises(FeatcacheError, match="store "):
        compare_e2e(small(other, finished), ctx=CPU)


def test_the_same_configuration_resumes_keeping_its_finished_runs(sweep, micro_store, monkeypatch):
    done = sweep / "runs" / "C" / "size-4" / "seed-1" / "results.json"
    kept = sweep / "runs" / "C" / "size-8" / "seed-1" / "results.json"
    done.unlink()  # as if killed before this run finished
    (sweep / "runs" / "C" / "size-8" / "seed-0" / CASE_MASKS).unlink()  # a case run must keep its case masks too
    stamp = kept.stat().st_mtime_ns
    trained = []
    train = featcache.train.compare.train_sizes_from_store

    def counted(store, groups, **kwargs):
        trained.extend((c.size, c.seed) for g in groups for c in g.cfgs)
        return train(store, groups, **kwargs)

    monkeypatch.setattr(featcache.train.compare, "train_sizes_from_store", counted)
    result = compare_e2e(small(micro_store, sweep), ctx=CPU)
    assert sorted(trained) == [(4, 1), (8, 0)]
    assert kept.stat().st_mtime_ns == stamp and done.is_file()
    assert len(result.results) == 4 and (sweep / "report.md").is_file()


def test_overwrite_replaces_the_earlier_sweep(sweep, micro_store):
    (sweep / "notes.txt").write_text("mine")
    result = compare_e2e(small(micro_store, sweep, sizes=(8,), seeds=(2,), overwrite=True), ctx=CPU)
    assert {(r.size, r.seed) for r in result.results} == {(8, 2)}
    assert sorted(p.name for p in (sweep / "runs" / "C").iterdir()) == ["size-8"]
    assert sorted(p.name for p in (sweep / "runs" / "C" / "size-8").iterdir()) == ["seed-2"]
    assert (sweep / "notes.txt").read_text() == "mine"  # only the sweep's own files go
    assert json.loads((sweep / COMPARISON_FILE).read_text())["configuration"]["seeds"] == [2]


def test_overwrite_with_the_same_configuration_resumes(sweep, micro_store):
    """A rerun from OUT/config.toml that recorded --overwrite keeps the finished runs rather than deleting them."""
    kept = sweep / "runs" / "C" / "size-8" / "seed-1" / "results.json"
    stamp = kept.stat().st_mtime_ns
    compare_e2e(small(micro_store, sweep, overwrite=True), ctx=CPU)
    assert kept.stat().st_mtime_ns == stamp


def test_an_earlier_sweep_without_its_configuration_is_refused(micro_store, tmp_path):
    out = tmp_path / "old"
    (out / "runs").mkdir(parents=True)
    (out / "report.md").write_text("an earlier report")
    with pytest.raises(FeatcacheError, match="whose configuration is not recorded; choose another --out, or pass"):
        compare_e2e(small(micro_store, out), ctx=CPU)
    assert (out / "report.md").read_text() == "an earlier report"


def test_the_command_line_refuses_in_one_line(finished, micro_store, cli):
    sweep = finished
    before = snapshot(sweep)
    result = cli(
        "compare-e2e",
        micro_store,
        *("--modes", "C", "--sizes", "8,4", "--seeds", "0,1,2", "--epochs", "1", "--batch-size", "4"),
        *("--val-size", "3", "--lr", "0.01", "--out", sweep),
    )
    one_line_error(result, "holds a compare-e2e sweep of another configuration", "seeds", "--overwrite")
    assert snapshot(sweep) == before
