"""Sweeps that train on label selections: random's runs are exactly an earlier sweep's, a strategy's runs train on
the images it chose (nested across sizes where its order is), a selection file's first N ids train every seed,
the runs record how their images were chosen, and the report compares each strategy with random."""

import csv
import json

import pytest
import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.results.records import RunResults
from featcache.selection import choose, training_candidates
from featcache.store import FeatureStore
from featcache.train import compare_e2e, train_decoder
from tests.helpers import CPU, quick_compare, quick_sweep

SAME = ("test", "history", "train_ids", "best_epoch", "best_val_loss", "config")


def same_run(a: RunResults, b: RunResults) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in SAME)


def untimed_rows(path) -> list[dict]:
    """The rows of a results.csv without their seconds (which no two runs share)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(f)]


def chosen_ids(store_path, strategy, budget, seed) -> list[str]:
    """The training ids ``strategy`` chooses, in store order (as a run lists them)."""
    with FeatureStore.open(store_path) as store:
        picked = choose(training_candidates(store, CPU.device), strategy=strategy, budget=budget, seed=seed)
        return [store.ids[r] for r in sorted(picked.rows)]


@pytest.fixture(scope="module")
def plain(micro_store, tmp_path_factory):
    """An earlier sweep: modes F and C, sizes 8 and 4, seeds 0 and 1, no selection."""
    return compare_e2e(quick_compare(micro_store, tmp_path_factory.mktemp("plain")), ctx=CPU)


@pytest.fixture(scope="module")
def selected(micro_store, tmp_path_factory):
    """The same sweep comparing random with k-center and TypiClust (random not named: it is always trained)."""
    cfg = quick_compare(micro_store, tmp_path_factory.mktemp("selected"), selections=("kcenter", "typiclust"))
    return compare_e2e(cfg, ctx=CPU)


def runs_of(comparison, strategy):
    return {(r.mode, r.size, r.seed): r for r in comparison.results if r.selection.strategy == strategy}


def test_random_runs_are_exactly_the_runs_of_an_earlier_sweep(plain, selected):
    before = {(r.mode, r.size, r.seed): r for r in plain.results}
    after = runs_of(selected, "random")
    assert after.keys() == before.keys() and len(after) == 2 * 2 * 2
    for key, run in after.items():
        assert same_run(run, before[key]), key
        assert run.selection.seed == key[2] and run.selection.nested and before[key].selection is None


def test_every_mode_size_and_seed_trains_on_the_strategy_s_images(micro_store, selected):
    for strategy in ("kcenter", "typiclust"):
        runs = runs_of(selected, strategy)
        assert len(runs) == 2 * 2 * 2
        for (mode, size, seed), run in runs.items():
            assert run.train_ids == chosen_ids(micro_store, strategy, size, seed), (strategy, mode, size, seed)
            assert run.train_ids == runs[("C" if mode == "F" else "F", size, seed)].train_ids
            assert run.selection.seed == seed and run.selection.nested == (strategy == "kcenter")
            assert run.selection.params["view"] == "identity"
            # Paired with random's run of the seed: the same validation subset and protocol.
            assert run.val_size == runs_of(selected, "random")[(mode, size, seed)].val_size


def test_k_center_sizes_nest_as_random_s_do(selected):
    for strategy in ("random", "kcenter"):
        runs = runs_of(selected, strategy)
        for seed in (0, 1):
            assert set(runs[("C", 4, seed)].train_ids) < set(runs[("C", 8, seed)].train_ids)


def test_runs_of_a_selection_sit_in_their_own_folders_and_record_it(selected):
    path = selected.out / "runs" / "C" / "size-4" / "kcenter" / "seed-1" / "results.json"
    record = json.loads(path.read_text())["selection"]
    assert record["strategy"] == "kcenter" and record["seed"] == 1 and record["nested"] is True
    assert list(json.loads(path.read_text()))[-1] == "selection"
    assert (selected.out / "runs" / "F" / "size-8" / "random" / "seed-0" / "results.json").is_file()


def test_the_report_pairs_each_strategy_with_random(plain, selected):
    report = (selected.out / "report.md").read_text()
    section = report[report.index("## Label selection against random") :]
    assert "**typiclust**: **not nested**" in section and "**kcenter**: nested" in section
    runs = runs_of(selected, "kcenter")
    base = runs_of(selected, "random")
    difference = sum(runs[("C", 8, k)].test.iou - base[("C", 8, k)].test.iou for k in (0, 1)) / 2
    assert "| 8 | C | kcenter | " in section and f"| {difference:+.3f} | [" in section
    assert (selected.out / "selection_vs_size.png").stat().st_size > 5000
    assert (selected.out / "selection.csv").read_text().count("\n") == 1 + 3 * 8
    # Every other section reads random's runs: the same tables as the earlier sweep.
    assert untimed_rows(selected.out / "results.csv") == untimed_rows(plain.out / "results.csv")
    plain_report = (plain.out / "report.md").read_text()
    assert report[: report.index("## Training time")] == plain_report[: plain_report.index("## Training time")]


def test_train_decoder_with_a_strategy_trains_each_seed_on_its_choice(micro_store, tmp_path):
    sweep = train_decoder(quick_sweep(micro_store, tmp_path / "k", selection="probcover"), ctx=CPU)
    for run in sweep.results:
        assert run.train_ids == chosen_ids(micro_store, "probcover", 8, run.seed)
        assert run.selection.strategy == "probcover" and run.selection.nested is False
        assert "delta" in run.selection.params
    assert sweep.summary["selection"] == "probcover"
    assert json.loads((tmp_path / "k" / "seed-1" / "results.json").read_text())["selection"]["seed"] == 1


def test_train_decoder_random_selection_keeps_an_earlier_sweep_s_runs(micro_store, tmp_path, capsys):
    earlier = train_decoder(quick_sweep(micro_store, tmp_path / "r", seeds=(0,)), ctx=CPU)
    again = train_decoder(quick_sweep(micro_store, tmp_path / "r", seeds=(0,), selection="random"), ctx=CPU)
    assert "already finished, kept" in capsys.readouterr().err
    fresh = train_decoder(quick_sweep(micro_store, tmp_path / "fresh", seeds=(0,), selection="random"), ctx=CPU)
    assert same_run(fresh.results[0], earlier.results[0]) and same_run(again.results[0], earlier.results[0])
    assert fresh.results[0].selection.strategy == "random"


def test_a_selection_file_trains_every_seed_on_its_first_ids(micro_store, tmp_path):
    with FeatureStore.open(micro_store) as store:
        train = [store.ids[i] for i in store.indices("train")]
    ids = [train[i] for i in (9, 2, 7, 0, 11, 5, 3, 8, 1, 10)]
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(ids) + "\n")
    sweep = train_decoder(quick_sweep(micro_store, tmp_path / "f", selection_file=path), ctx=CPU)
    first8 = sorted(ids[:8], key=train.index)
    assert [r.train_ids for r in sweep.results] == [first8, first8]
    assert sweep.results[0].history != sweep.results[1].history  # the seeds vary the training
    assert sweep.results[0].selection.file == str(path) and sweep.results[0].selection.seed is None
    comparison = compare_e2e(quick_compare(micro_store, tmp_path / "c", modes=("C",), selection_file=path), ctx=CPU)
    by_size = {r.size: r.train_ids for r in comparison.results if r.selection.strategy == "file"}
    assert by_size == {8: first8, 4: sorted(ids[:4], key=train.index)}


def test_a_selection_file_shorter_than_a_size_is_refused_before_training(micro_store, tmp_path):
    with FeatureStore.open(micro_store) as store:
        path = tmp_path / "three.txt"
        path.write_text("\n".join(store.ids[i] for i in store.indices("train")[:3]))
    with pytest.raises(FeatcacheError) as caught:
        train_decoder(quick_sweep(micro_store, tmp_path / "out", selection_file=path), ctx=CPU)
    assert "names 3 images, fewer than --size 8 takes" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "seed-0").exists()


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda s, o: quick_sweep(s, o, selection="coreset"), "--selection coreset is not one of random, kcenter"),
        (lambda s, o: quick_sweep(s, o, selection="kcenter", selection_file=o / "x"), "not both"),
        (lambda s, o: quick_compare(s, o, selections=("random", "coreset")), "--selections random,coreset: choose"),
    ],
)
def test_selections_that_can_never_work_are_usage_errors(micro_store, tmp_path, make, words):
    cfg = make(micro_store, tmp_path)
    with pytest.raises(OptionError) as caught:
        (train_decoder if hasattr(cfg, "size") else compare_e2e)(cfg, ctx=CPU)
    assert words in str(caught.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_strategy_chooses_the_images_it_chooses_on_the_cpu(micro_store, tmp_path):
    from featcache.core.context import Context

    cuda = Context(device=torch.device("cuda"), progress=False)
    cfg = quick_sweep(micro_store, tmp_path / "k", selection="kcenter", epochs=1)
    sweep = train_decoder(cfg, ctx=cuda)
    for run in sweep.results:
        assert run.train_ids == chosen_ids(micro_store, "kcenter", 8, run.seed)


def test_a_selected_sweep_run_again_keeps_its_finished_runs(micro_store, tmp_path, capsys):
    """Its identity holds tuples (the chosen ids, --layers) that results.json reads back as lists."""
    cfg = quick_sweep(micro_store, tmp_path / "k", seeds=(0,), selection="kcenter", layers=(-1,), epochs=1)
    first = train_decoder(cfg, ctx=CPU)
    capsys.readouterr()
    again = train_decoder(cfg, ctx=CPU)
    assert "already finished, kept" in capsys.readouterr().err
    assert again.results[0].to_json() == json.loads(json.dumps(first.results[0].to_json()))
