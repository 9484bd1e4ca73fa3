"""featcache.results.report: what report.md says of times, encoders, the study and degenerate runs."""

import dataclasses

import pytest
import torch

from featcache.core.machine import Environment, Machine
from featcache.results.figures import Cases
from featcache.results.report import ReportContext, write_report
from featcache.train.modes import MODES
from tests.helpers import hand_made_results, tiny_identity

MODE_WORDS = "random ViT-Ti/16"


def context(**overrides) -> ReportContext:
    identity = tiny_identity()
    encoder = dataclasses.replace(identity.encoder, arch="vit_ti_16")
    options = dict(
        store="store.zarr",
        n_test=4,
        image_size=32,
        encoder=encoder,
        e_init=encoder.source,
        layers=[],
        depth=12,
        device="cpu",
        dataset=identity.dataset,
        dataset_root=None,
        extraction_seconds=None,
        extraction_device=None,
        augment="exact",
        modes=["E", "F", "C"],
        mode_descriptions={m: MODES[m].describe(MODE_WORDS) for m in ("E", "F", "C")},
        sizes=[40, 10],
        seeds=[0, 1],
        epochs=2,
        lr=2e-4,
        lrs=[2e-4],
        grid_modes=[],
        init_encoder=encoder,
        not_study=["vit_ti_16 at 32 px (the study's: vit_b_16 at 224 px)"],
        environment=Environment(
            machine=Machine(cpu="Test CPU", cpu_count=2, threads=2),
            device="cpu",
            load_start=[3.38, 1.74, 1.74],
            load_end=[4.0, 2.0, 1.8],
        ),
    )
    return ReportContext(**{**options, **overrides})


def runs():
    """E, F and C at sizes 40 and 10, two seeds; C at 40 has one seed 22x slower (68.8 s vs 3.1 s), and F at 10
    one seed that called every pixel lesion."""
    out = []
    for size in (40, 10):
        for mode in ("E", "F", "C"):
            for seed in (0, 1):
                seconds = {"E": 10.0, "F": 6.0, "C": 3.1}[mode] + seed * 0.1
                if (mode, size, seed) == ("C", 40, 0):
                    seconds = 68.8
                entries = {"history": {"train_loss": [0.6, 0.5], "val_loss": [0.6, 0.55]}, "best_epoch": 2}
                if (mode, size, seed) == ("F", 10, 1):
                    entries["degenerate"] = ["specificity 0.001 < 0.05", "all 4 test masks full"]
                out.append(
                    hand_made_results(
                        mode=mode, size=size, seed=seed, iou=0.4 + 0.01 * seed, train_seconds=seconds, **entries
                    )
                )
    return out


def cases() -> Cases:
    predictions = {}
    for mode in ("E", "F", "C"):
        for size in (40, 10):
            predictions[(mode, size)] = torch.zeros(2, 32, 32, dtype=torch.uint8)
    predictions[("F", 10)][0] = 1  # all lesion
    return Cases(["a", "b"], torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, 32, 32), predictions)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(runs(), context=context(), out=out, cases=cases()).read_text()


def test_times_are_medians_with_their_spread_and_an_outlier_seed_is_footnoted(report):
    """The demo's case: C at one size, seed 0 68.8 s under load, seed 1 3.2 s (two seeds)."""
    table = report[report.index("## Training time") :]
    row = next(line for line in table.splitlines() if line.startswith("| 40 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["10.05 (10.00–10.10)", "6.05 (6.00–6.10)", "36.00 (3.20–68.80)†"]
    assert "C saved vs E" in table and "-258.2 %†" in row and "0.3x†" in row  # medians, and the outlier said
    assert "one took more than 3x the fastest seed of its mode and size" in table
    assert "Machine: Test CPU, 2 logical cores" in report and "3.38 at the start and 4.00 at the end" in report
    assert "other load was seen" in report


def test_encoders_are_named_as_they_are_and_never_called_self_supervised(report):
    assert "self-supervised" not in report
    assert "- **F**: random ViT-Ti/16 frozen, recomputed at every step" in report
    used = "read by C, run by F and Es, its last blocks trained by Tk and Pk"
    assert f"the store's encoder ({used}): random ViT-Ti/16, weights sha256 aaaaaaaa" in report


def test_the_study_is_shown_only_in_its_setting_or_when_asked(report, tmp_path):
    assert "study E" not in report and "not its setting (vit_ti_16 at 32 px" in report
    asked = write_report(runs(), context=context(study_lines=True), out=tmp_path, cases=cases()).read_text()
    assert "| size | E | F | C | study E | study F |" in asked and "shown on request" in asked
    assert "| 40 | " in asked and "0.580 | 0.587 |" in asked  # the study's IoU at 40


def test_degenerate_runs_are_counted_per_mode_and_size(report):
    assert "0.405 ± 0.007 (1 degenerate)" in report
    section = report[report.index("## Degenerate runs") :]
    assert "| 10 | 0 of 2 | 1 of 2 | 0 of 2 |" in section
    assert "- F, size 10, seed 1: specificity 0.001 < 0.05; all 4 test masks full" in section
