"""featcache.results.study: the study's figures, and whether a store is in its setting."""

import dataclasses

from featcache.models import WeightsSource
from featcache.results.study import STUDY_IOU, STUDY_SECONDS, not_the_study
from tests.helpers import tiny_identity

SIZES = [2000, 160, 80, 40, 20, 10]


def test_the_study_setting_is_isic_2017_official_counts_vit_b_16_at_224(tmp_path):
    identity = tiny_identity()
    study = dataclasses.replace(
        identity,
        encoder=dataclasses.replace(identity.encoder, arch="vit_b_16"),
        preprocessing=dataclasses.replace(identity.preprocessing, size=224),
        dataset=dataclasses.replace(
            identity.dataset, layout="isic2017", counts={"train": 2000, "val": 150, "test": 600}
        ),
    )
    official = [f"ISIC_{i:07d}" for i in range(0, 2 * 2750, 2)]  # not numbered in sequence
    assert not_the_study(study, official) == []
    numbered = [f"ISIC_{i:07d}" for i in range(2750)]  # as synth numbers them
    assert "as featcache synth numbers them" in not_the_study(study, numbered)[0]
    (tmp_path / "synth.json").write_text("{}")
    marked = dataclasses.replace(study, dataset_root=str(tmp_path))
    assert not_the_study(marked, official) == [f"synthetic data (synth.json in {tmp_path})"]
    other = dataclasses.replace(study, encoder=dataclasses.replace(study.encoder, source=WeightsSource("random")))
    assert not_the_study(other, official) == []  # the setting is the data and the architecture, not the weights
    small = dataclasses.replace(study, dataset=dataclasses.replace(study.dataset, counts={"train": 120}))
    # Real ISIC images may well be numbered in sequence in a small subset: no claim of synthetic data then.
    assert not_the_study(small, numbered[:120]) == ["120/0/0 images (the study's: 2000/150/600)"]


def test_modes_e_and_f_at_the_study_s_six_sizes_largest_first():
    for table in (STUDY_IOU, STUDY_SECONDS):
        assert list(table) == ["E", "F"] and all(list(per_size) == SIZES for per_size in table.values())


def test_the_published_values():
    assert STUDY_IOU["E"][2000] == 0.670 and STUDY_IOU["F"][10] == 0.507
    assert STUDY_SECONDS["E"][2000] == 1638.6 and STUDY_SECONDS["F"][10] == 93.9
    assert all(0 < v < 1 for per_size in STUDY_IOU.values() for v in per_size.values())
    # The frozen encoder F trains faster than end to end E at every size.
    assert all(STUDY_SECONDS["F"][s] < STUDY_SECONDS["E"][s] for s in SIZES)
