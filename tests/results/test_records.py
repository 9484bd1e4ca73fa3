"""featcache.results.records: a run's results.json and decoder checkpoint, read and written through records."""

import json
import math

import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.io import safe_torch_load, torch_save
from featcache.results.records import DECODER_CHECKPOINT_FORMAT, DecoderCheckpoint, RunResults
from featcache.store.feature_store import FeatureStore
from featcache.train import train_from_store
from tests.helpers import quick_train

#: Entries a results.json of an older featcache lacks.
ADDED_SINCE = (
    "cuda_graphs",
    "best_val_loss",
    "eval_size",
    "decoder",
    "test_images",
    "config",
    "train_ids",
    "group",
    "store_identity",
)


@pytest.fixture(scope="module")
def run(micro_store, tmp_path_factory):
    """A real one-epoch run on `micro_store`: its output, and its results.json written and read back as JSON."""
    with FeatureStore.open(micro_store) as store:
        output = train_from_store(store, quick_train(epochs=1), torch.device("cpu"))
    path = tmp_path_factory.mktemp("run") / "results.json"
    output.results.write(path)
    return output, path, json.loads(path.read_text())


def test_a_real_results_json_round_trips_unchanged(run):
    output, path, written = run
    assert list(written)[:4] == ["mode", "size", "seed", "val_size"] and written["mode"] == "C"
    results = RunResults.read(path)
    assert results.to_json() == written and list(results.to_json()) == list(written)
    assert RunResults.from_json(written) == output.results
    assert results.lr == written["optimiser"]["lr"] and results.weight_decay == written["optimiser"]["weight_decay"]
    assert results.test.as_dict() == written["test"] and len(results.history.val_loss) == 1
    assert results.best_epoch == 1 and results.best_val_loss == written["history"]["val_loss"][0]
    assert len(results.train_ids) == 8 and results.config["size"] == 8


def test_an_older_results_json_reads_with_defaults(run, tmp_path):
    _, _, written = run
    old = {k: v for k, v in written.items() if k not in ADDED_SINCE}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    results = RunResults.read(path)
    assert results.cuda_graphs is False and math.isinf(results.best_val_loss)
    assert (results.eval_size, results.decoder, results.test_images) == ("224", "sd", 0)
    assert results.config == {} and results.train_ids == [] and results.group is None
    assert results.store_identity is None
    assert results.test.iou == written["test"]["iou"] and results.history.train_loss == written["history"]["train_loss"]
    assert "group" not in results.to_json() and "store_identity" not in results.to_json()


def test_a_newer_results_json_keeps_what_it_adds(run):
    _, _, written = run
    newer = {**written, "energy_joules": 12.5, "test": {**written["test"], "hausdorff": 3.0}}
    results = RunResults.from_json(newer)
    assert results.extra == {"energy_joules": 12.5} and results.test.extra == {"hausdorff": 3.0}
    assert results.to_json() == newer


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "Expecting property name"),
        (b"\xff\xfe\x00binary", "codec can't decode"),
        ("[1, 2]", "RunResults expects a JSON object, not list"),
        ('{"zarr_format": 3, "node_type": "group"}', "RunResults lacks its entry 'mode'"),
    ],
)
def test_a_file_that_is_not_a_results_json_is_one_line_naming_it(tmp_path, content, why):
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(FeatcacheError) as info:
        RunResults.read(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a featcache results.json (") and why in message
    assert message.endswith("); delete it to train the run again") and "\n" not in message


def test_a_results_json_missing_a_test_metric_names_it(run, tmp_path):
    _, _, written = run
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**written, "test": {k: v for k, v in written["test"].items() if k != "dice"}}))
    with pytest.raises(FeatcacheError, match=r"\(RunResults.test: TestScores lacks its entry 'dice'\); delete it"):
        RunResults.read(path)


def test_the_decoder_checkpoint_round_trips_through_torch_save(run, tmp_path):
    output, _, _ = run
    saved = output.checkpoint.to_dict()
    assert saved["format"] == DECODER_CHECKPOINT_FORMAT
    assert "history" not in saved["results"] and "train_ids" not in saved["results"]
    path = tmp_path / "decoder.pt"
    torch_save(saved, path)
    again = DecoderCheckpoint.from_dict(safe_torch_load(path), path)
    assert (again.decoder, again.in_channels, again.layers, again.patch_size) == ("sd", 32, [2], 16)
    assert again.store.to_json() == output.checkpoint.store.to_json()
    assert again.config == output.checkpoint.config and again.encoder_state_dict is None
    # The checkpoint keeps the results without the history, training ids and sweep identity: those read as empty.
    expected = {**output.results.to_json(), "train_ids": [], "history": {"train_loss": [], "val_loss": []}}
    expected.pop("store_identity", None)
    assert again.results.to_json() == expected
    assert all(torch.equal(again.state_dict[k], v) for k, v in output.checkpoint.state_dict.items())
    assert again.to_dict().keys() == saved.keys()


def test_a_dict_that_is_not_a_decoder_checkpoint_is_refused(run, tmp_path):
    output, _, _ = run
    path = tmp_path / "decoder.pt"
    for data in ({"state_dict": {}}, {**output.checkpoint.to_dict(), "format": "featcache-encoder/1"}, [1]):
        with pytest.raises(FeatcacheError) as info:
            DecoderCheckpoint.from_dict(data, path)
        assert str(info.value) == (f"{path} is not a featcache decoder checkpoint; pass a train-decoder output folder")
    damaged = {k: v for k, v in output.checkpoint.to_dict().items() if k != "in_channels"}
    with pytest.raises(FeatcacheError, match=rf"^{path}: the decoder checkpoint is damaged \('in_channels'\); train"):
        DecoderCheckpoint.from_dict(damaged, path)
