"""`featcache select` as a library call: the ids file, its manifest, the scatter and the contact sheet, the table,
and refusals of what can never work."""

import json

import pytest
import torch
from PIL import Image
from rich.console import Console

from featcache.core.errors import FeatcacheError, OptionError
from featcache.selection import SelectConfig, select_to_file, selection_table
from featcache.selection.figures import pca_2d
from featcache.store import FeatureStore
from tests.helpers import CPU


def test_select_writes_the_ids_the_manifest_and_two_figures(micro_store, tmp_path):
    out = tmp_path / "picks" / "kcenter.txt"
    report = select_to_file(SelectConfig(str(micro_store), 5, out, strategy="kcenter", seed=1), ctx=CPU)
    ids = out.read_text().splitlines()
    manifest = json.loads((tmp_path / "picks" / "kcenter.txt.json").read_text())
    assert len(ids) == 5 == len(set(ids)) and out.read_text() == "".join(f"{i}\n" for i in ids)
    assert manifest["ids"] == ids and manifest["strategy"] == "kcenter" and manifest["seed"] == 1
    assert manifest["nested"] is True and manifest["candidates"] == 12 and manifest["split"] == "train"
    assert manifest["params"]["view"] == "identity" and manifest["params"]["pooling"].startswith("mean over")
    with FeatureStore.open(micro_store) as store:
        assert [store.ids[r] for r in manifest["rows"]] == ids
        assert set(ids) <= {store.ids[i] for i in store.indices("train")}
        masks = store.masks(manifest["rows"])
    assert report.figures == [tmp_path / "picks" / f"kcenter.txt.{n}.png" for n in ("pca", "sheet")]
    for figure in report.figures:
        assert Image.open(figure).format == "PNG"
    assert report.lesion == pytest.approx(masks.flatten(1).float().mean(1).tolist())
    console = Console(width=200, record=True)
    console.print(selection_table(report))
    text = console.export_text()
    assert all(i in text for i in ids) and "start" in text and "nested across budgets" in text


def test_the_same_request_chooses_the_same_images(micro_store, tmp_path):
    first = select_to_file(SelectConfig(str(micro_store), 4, tmp_path / "a.txt", strategy="typiclust"), ctx=CPU)
    again = select_to_file(SelectConfig(str(micro_store), 4, tmp_path / "b.txt", strategy="typiclust"), ctx=CPU)
    assert first.manifest.ids == again.manifest.ids and first.manifest.nested is False


def test_pca_coordinates_are_the_leading_principal_components():
    x = torch.zeros(50, 5)
    x[:, 0] = torch.linspace(-3, 3, 50)
    x[:, 3] = torch.linspace(-1, 1, 50) ** 2
    coords, (first, second) = pca_2d(x)
    assert abs(coords[:, 0]).max() == pytest.approx(3.0) and first > second > 0
    assert first + second == pytest.approx(1.0)


@pytest.mark.parametrize(
    "change,error,words",
    [
        (
            {"strategy": "coreset"},
            OptionError,
            "--strategy coreset is not one of random, kcenter, typiclust, probcover",
        ),
        ({"budget": 0}, OptionError, "--budget 0 must be at least 1"),
        ({"seed": -1}, OptionError, "--seed -1 must be 0 or more"),
        ({"out": "."}, FeatcacheError, "is a folder; give a file name for the ids"),
    ],
)
def test_requests_that_can_never_work_are_refused_before_reading(micro_store, tmp_path, change, error, words):
    options = {"store": str(micro_store), "budget": 3, "out": tmp_path / "ids.txt", **change}
    with pytest.raises(error) as caught:
        select_to_file(SelectConfig(**options), ctx=CPU)
    assert words in str(caught.value) and not (tmp_path / "ids.txt").exists()
