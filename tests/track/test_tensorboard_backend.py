"""TensorBoard: runs' event files read back through TensorBoard's own `EventAccumulator`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from featcache.track import open_trackers

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, metadata  # noqa: E402


def read(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def hparams(events: EventAccumulator) -> tuple[dict, int | None]:
    """(the session's parameters, its end status: None while it has none)."""
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
    if metadata.SESSION_END_INFO_TAG not in content:
        return values, None
    return values, metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG]).status


def test_a_run_reads_back_equal_to_its_results_json(tmp_path, fake_run):
    trackers = open_trackers(["tensorboard"], out=tmp_path / "out")
    run = trackers.start_run(name="C/n10/seed-0", group="sweep", params=fake_run.params, tags={"command": "test"})
    fake_run.log(run)
    trackers.close()
    assert run.ids == {"tensorboard": "C/n10/seed-0"}
    events, results = read(tmp_path / "out" / "tensorboard" / "C" / "n10" / "seed-0"), fake_run.results
    for key in ("train_loss", "val_loss", "epoch_seconds"):
        logged = scalars(events, key)
        assert [step for step, _ in logged] == [row["epoch"] for row in results["history"]]
        # Event files hold float32 scalars.
        assert [value for _, value in logged] == pytest.approx([row[key] for row in results["history"]], rel=1e-6)
    for key, value in results["test"].items():
        assert scalars(events, key) == [(0, pytest.approx(value, rel=1e-6))]
    params, status = hparams(events)
    assert params == {**results["params"], "tag.command": "test", "group": "sweep"} and status == api_pb2.STATUS_SUCCESS
    text = events.Tensors("artifacts/results.json/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == results
    image = events.Images("artifacts/figures/curves.png")[0]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    assert np.array_equal(pixels, np.asarray(Image.open(fake_run.folder / "figures" / "curves.png")))


def test_a_resumed_run_writes_into_its_folder_and_purges_the_epochs_it_trains_again(tmp_path, fake_run):
    out = tmp_path / "out"
    first = open_trackers(["tensorboard"], out=out)  # killed after epoch 3, its checkpoint at epoch 1
    run = first.start_run(name="seed-0", params=fake_run.params)
    for epoch in (1, 2, 3):
        run.log_epoch(epoch=epoch, metrics={"train_loss": float(epoch)})
    run.end("killed")
    assert hparams(read(out / "tensorboard" / "seed-0"))[1] is None  # TensorBoard would keep a first end for good

    second = open_trackers(["tensorboard"], out=out)
    resumed = second.start_run(name="seed-0", params=fake_run.params, run_ids=run.ids)
    for epoch in (2, 3, 4):
        resumed.log_epoch(epoch=epoch, metrics={"train_loss": 10.0 * epoch})
    resumed.end()
    assert resumed.ids == run.ids == {"tensorboard": "seed-0"}
    assert [p.name for p in (out / "tensorboard").iterdir()] == ["seed-0"]
    events = read(out / "tensorboard" / "seed-0")
    assert scalars(events, "train_loss") == [(1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    assert hparams(events)[1] == api_pb2.STATUS_SUCCESS


def test_a_new_run_of_a_name_already_used_gets_a_folder_of_its_own(tmp_path):
    trackers = open_trackers(["tensorboard"], out=tmp_path)
    ids = [trackers.start_run(name="seed-0").ids["tensorboard"] for _ in range(2)]
    assert ids == ["seed-0", "seed-0-2"] and (tmp_path / "tensorboard" / "seed-0-2").is_dir()


def test_a_disk_that_fills_up_costs_one_warning(tmp_path, fake_run, capsys, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    trackers = open_trackers(["tensorboard"], out=tmp_path)
    run = trackers.start_run(name="seed-0", params=fake_run.params)
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    fake_run.log(run)
    fake_run.log(trackers.start_run(name="seed-1"))
    assert capsys.readouterr().err.count("warning: tensorboard tracking failed (OSError: [Errno 28] No space") == 1
