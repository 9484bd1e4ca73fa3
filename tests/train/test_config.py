"""featcache.train.config: the configuration objects a command builds once, and the values they refuse."""

from pathlib import Path

import pytest

from featcache.core.errors import OptionError
from featcache.train.config import CompareConfig, RunKey, SweepConfig, TrainConfig
from featcache.train.modes import MODES

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("lr", [NAN, INF, -INF, -1e-4, 0.0])
def test_a_learning_rate_that_is_not_a_positive_number_is_a_usage_error(lr):
    with pytest.raises(OptionError, match=rf"^--lr {lr} must be a positive number$"):
        TrainConfig(size=8, lr=lr).validate()


@pytest.mark.parametrize("wd", [NAN, INF, -1e-4])
def test_a_weight_decay_that_is_not_0_or_more_is_a_usage_error(wd):
    with pytest.raises(OptionError, match=rf"^--weight-decay {wd} must be a number, 0 or more$"):
        TrainConfig(size=8, weight_decay=wd).validate()


def test_valid_values_pass_and_other_choices_are_named():
    TrainConfig(size=8, lr=1e-3, weight_decay=0.0, augment="none", decoder="sd", eval_size="original").validate()
    with pytest.raises(OptionError, match=r"^--augment flips is not one of exact, feature-flip, none$"):
        TrainConfig(size=8, augment="flips").validate()
    with pytest.raises(OptionError, match=r"^unknown decoder 'unet'; choose one of "):
        TrainConfig(size=8, decoder="unet").validate()
    with pytest.raises(OptionError, match=r"^--eval-size 512 is not one of 224, original$"):
        TrainConfig(size=8, eval_size="512").validate()


def sweep(**overrides) -> SweepConfig:
    return SweepConfig(store="s.zarr", out=Path("out"), size=8, **overrides)


def test_sweep_keys_go_combination_by_combination_with_seeds_within():
    cfg = sweep(seeds=(2, 0), lrs=(1e-2, 1e-3), weight_decays=(1e-4, 0.0))
    assert cfg.keys() == [
        RunKey("C", 8, 2, 1e-2, 1e-4),
        RunKey("C", 8, 0, 1e-2, 1e-4),
        RunKey("C", 8, 2, 1e-2, 0.0),
        RunKey("C", 8, 0, 1e-2, 0.0),
        RunKey("C", 8, 2, 1e-3, 1e-4),
        RunKey("C", 8, 0, 1e-3, 1e-4),
        RunKey("C", 8, 2, 1e-3, 0.0),
        RunKey("C", 8, 0, 1e-3, 0.0),
    ]
    assert cfg.grid and not sweep().grid and sweep(weight_decays=(0.0, 1e-4)).grid
    assert len({*cfg.keys()}) == 8  # frozen keys: usable as dict keys


def test_run_config_is_the_runs_train_config():
    cfg = sweep(augment="none", decoder="sd", epochs=3, batch_size=2, val_size=5, eval_size="original", layers=(1, 2))
    key = RunKey("C", 8, 4, 1e-3, 0.0)
    assert cfg.run_config(key) == TrainConfig(
        size=8,
        seed=4,
        augment="none",
        decoder="sd",
        epochs=3,
        batch_size=2,
        val_size=5,
        lr=1e-3,
        weight_decay=0.0,
        eval_size="original",
        layers=(1, 2),
    )
    assert cfg.run_config(key, val_size=3).val_size == 3  # the plan's, once resolved
    assert sweep().run_config(sweep().keys()[0]).val_size is None


def test_sweep_validate_checks_every_value_and_the_runs_options():
    sweep(lrs=(1e-2, 1e-3), weight_decays=(0.0,)).validate()
    with pytest.raises(OptionError, match=r"^--lr -0\.1 must be a positive number$"):
        sweep(lrs=(1e-2, -0.1)).validate()
    with pytest.raises(OptionError, match=r"^--weight-decay nan must be"):
        sweep(weight_decays=(0.0, NAN)).validate()
    with pytest.raises(OptionError, match=r"^--lr and --weight-decay need at least one value each$"):
        sweep(lrs=()).validate()
    with pytest.raises(OptionError, match=r"^--augment x is not one of"):
        sweep(augment="x").validate()


def compare(**overrides) -> CompareConfig:
    return CompareConfig(store="s.zarr", out=Path("out"), **overrides)


def test_mode_lrs_every_rate_for_grid_modes_the_first_for_the_others():
    cfg = compare(lrs=(1e-2, 1e-3), grid_modes=("C", "F"))
    assert cfg.mode_lrs("C") == cfg.mode_lrs("F") == (1e-2, 1e-3) and cfg.mode_lrs("E") == (1e-2,)
    assert cfg.is_grid("C") and cfg.is_grid("F") and not cfg.is_grid("E")
    one = compare(lrs=(1e-3,))
    assert one.mode_lrs("C") == (1e-3,) and not one.is_grid("C")


def test_compare_validate():
    compare().validate()
    choices = ", ".join(m for m in MODES if not MODES[m].blocks)
    with pytest.raises(OptionError, match=rf"^--modes C,X --grid-modes C: unknown mode 'X'; choose from {choices}, "):
        compare(modes=("C", "X")).validate()
    with pytest.raises(OptionError, match=r"^--modes C --grid-modes Z: unknown mode 'Z'; choose from"):
        compare(modes=("C",), grid_modes=("Z",)).validate()
    with pytest.raises(OptionError, match=r"^--modes  --grid-modes C: give at least one mode"):
        compare(modes=()).validate()
    for sizes in ((), (8, 0)):
        with pytest.raises(OptionError, match=r"must be positive training-set sizes$"):
            compare(sizes=sizes).validate()
    with pytest.raises(OptionError, match=r"^--lr inf must be a positive number$"):
        compare(lrs=(1e-3, INF)).validate()
