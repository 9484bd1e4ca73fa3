"""Modes Tk and Pk (featcache.train.tail_run): Tk trains exactly as Pk from a float32 store, T0 is C, LoRA, the
predict path of a Tk run, seeds, grids, resume after SIGKILL and Ctrl-C, torchrun, compare-e2e and bad input."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.core.errors import OptionError
from featcache.core.io import safe_torch_load
from featcache.models import build_encoder
from featcache.results.predict import load_run
from featcache.store import FeatureStore
from featcache.store.extract import extract
from featcache.train import CompareConfig, compare_e2e, train_decoder
from featcache.train import sweep as sweep_module
from featcache.train.modes import parse_mode
from featcache.train.outputs import write_run
from featcache.train.tail_run import train_any_mode
from tests.helpers import CPU, extract_config, one_line_error, quick_sweep, quick_train, run_then_sigkill, run_torchrun

#: Large enough that the trained blocks move visibly in a few epochs.
LR = 0.05
SWEEP = ["--size", "6", "--seeds", "0", "--epochs", "2", "--batch-size", "3", "--val-size", "3"]


@pytest.fixture(scope="module")
def tail_store(synth_root, tmp_path_factory) -> Path:
    """float32, flip views, and the tokens entering both of vit_micro's blocks (K = 2)."""
    out = tmp_path_factory.mktemp("tail") / "tail.zarr"
    extract(extract_config(synth_root, out, dtype="float32", tail_tokens=2), ctx=CPU)
    return out


def run(store_path, mode: str, **overrides):
    """One run of ``mode`` on ``store_path`` (`quick_train` at lr `LR`), through the store's encoder."""
    cfg = quick_train(lr=LR, train_blocks=parse_mode(mode)[1], **overrides)
    with FeatureStore.open(store_path) as store:
        encoders = {"ssl": build_encoder("vit_micro", "random", seed=0)}
        return train_any_mode(store, mode, [cfg], plan=cfg.plan(store), encoders=encoders, ctx=CPU)[0]


@pytest.mark.parametrize("k,lora", [(1, None), (2, None), (1, 2)], ids=["T1-P1", "T2-P2", "T1-P1-lora"])
def test_tokens_train_exactly_as_images(tail_store, k, lora):
    """float32 store, exact flips: the cached tokens are what Pk's frozen blocks compute, so Tk and Pk see the same
    inputs, subsets, flips and initial weights (LoRA adapters too) and end with the same weights and metrics."""
    t, p = run(tail_store, f"T{k}", lora_rank=lora), run(tail_store, f"P{k}", lora_rank=lora)
    assert (t.results.mode, t.results.train_blocks, p.results.mode) == (f"T{k}", k, f"P{k}")
    assert t.results.train_ids == p.results.train_ids and t.results.best_epoch == p.results.best_epoch
    np.testing.assert_allclose(t.results.history.val_loss, p.results.history.val_loss, rtol=1e-5)
    np.testing.assert_allclose(t.results.history.train_loss, p.results.history.train_loss, rtol=1e-5)
    for name, value in t.results.test.as_dict().items():
        assert value == pytest.approx(getattr(p.results.test, name), abs=1e-3), name  # a pixel at most
    for key, value in t.checkpoint.state_dict.items():
        torch.testing.assert_close(value, p.checkpoint.state_dict[key], rtol=0, atol=1e-5, msg=key)
    trained_t, trained_p = t.checkpoint.encoder_state_dict, p.checkpoint.encoder_state_dict
    assert set(trained_t) == set(trained_p) and all(key.startswith("encoder.") for key in trained_t)
    for key, value in trained_t.items():
        torch.testing.assert_close(value, trained_p[key], rtol=0, atol=1e-5, msg=key)
    start = build_encoder("vit_micro", "random", seed=0).state_dict()
    assert any(not torch.allclose(value, start[key]) for key, value in trained_t.items())  # the blocks trained
    assert t.results.trainable_parameters == p.results.trainable_parameters
    if lora:
        assert t.results.lora.rank == lora and t.results.lora.trainable < t.results.trainable_parameters
        assert t.results.lora.weights[0].endswith("self_attention.in_proj_weight")


def test_zero_trained_blocks_is_c(micro_store, tmp_path):
    c = train_decoder(quick_sweep(micro_store, tmp_path / "c", seeds=(0,)), ctx=CPU)
    t0 = train_decoder(quick_sweep(micro_store, tmp_path / "t0", seeds=(0,), train_blocks=0), ctx=CPU)
    assert t0.summary["mode"] == c.summary["mode"] == "C" and t0.results[0].train_blocks is None
    assert t0.results[0].history == c.results[0].history and t0.results[0].test == c.results[0].test
    for name in ("T0", "P0"):
        with pytest.raises(OptionError, match=f"mode {name}: zero trained blocks is mode"):
            CompareConfig(store="s.zarr", out=tmp_path, modes=("C", name)).validate()


@pytest.mark.parametrize("lora", [None, 2], ids=["blocks", "lora"])
def test_a_tk_run_predicts_with_its_trained_blocks(tail_store, tmp_path, lora, cli):
    """The checkpoint keeps the trained blocks (LoRA merged) over the store's encoder: `load_run` rebuilds the net
    that scored the test split, and predict writes masks with it."""
    out = run(tail_store, "T1", lora_rank=lora)
    write_run(tmp_path / "run", out.results, out.checkpoint)
    trained = load_run(tmp_path / "run", encoder_weights=None, device=torch.device("cpu"))
    with FeatureStore.open(tail_store) as store, torch.no_grad():
        images = store.images(store.indices("test")).float() / 255
        logits = trained.decoder(trained.encoder(images))
        data = Path(store.record.dataset_root) / "ISIC-2017_Test_v2_Data"
    torch.testing.assert_close(logits, out.test_logits, rtol=0, atol=1e-4)
    result = cli(
        "--device", "cpu", "predict", tmp_path / "run", data, "--out", tmp_path / "masks", "--overlays", "none"
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "masks").glob("*_segmentation.png"))) == 6


def test_train_decoder_tk_over_seeds_and_a_grid(tail_store, tmp_path, cli):
    grid = [*SWEEP, "--seeds", "0,1", "--train-blocks", "2", "--lr", "0.01,0.05", "--out", tmp_path / "grid"]
    result = cli("--device", "cpu", "train-decoder", tail_store, *grid)
    assert result.returncode == 0, result.stderr
    assert "T2 mode, 6 training images, 2 (lr, weight decay) x 2 seeds" in result.stdout
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    assert summary["mode"] == "T2" and len(summary["grid"]) == 2
    for folder in ("lr-1e-2_wd-1e-4/seed-0", "lr-5e-2_wd-1e-4/seed-1"):
        ran = json.loads((tmp_path / "grid" / folder / "results.json").read_text())
        assert (ran["mode"], ran["train_blocks"], ran["config"]["train_blocks"]) == ("T2", 2, 2)
        assert list(ran)[:2] == ["mode", "train_blocks"]
    again = cli("--device", "cpu", "train-decoder", tail_store, *grid)
    assert again.returncode == 0 and again.stderr.count("already finished, kept") == 4


def test_sigkill_then_rerun_equals_uninterrupted(tail_store, tmp_path):
    out, reference = tmp_path / "killed", tmp_path / "ref"
    options = dict(seeds=(0,), epochs=5, batch_size=3, lrs=(LR,), train_blocks=1, lora_rank=2)
    run_then_sigkill(
        f"""
        import dataclasses
        from featcache.train import train_decoder
        from tests.helpers import CPU, quick_sweep

        cfg = quick_sweep({str(tail_store)!r}, {str(out)!r}, **{options!r})
        train_decoder(cfg, ctx=dataclasses.replace(CPU, checkpoint_seconds=0))
    """,
        after_saves=2,
    )
    assert (out / "resume-0.pt").exists() and not (out / "seed-0" / "results.json").exists()
    every_epoch = dataclasses.replace(CPU, checkpoint_seconds=0)
    resumed = train_decoder(quick_sweep(tail_store, out, **options), ctx=every_epoch)
    plain = train_decoder(quick_sweep(tail_store, reference, **options), ctx=CPU)
    assert resumed.results[0].history == plain.results[0].history and resumed.results[0].test == plain.results[0].test
    a, b = (safe_torch_load(folder / "seed-0" / "decoder.pt") for folder in (out, reference))
    for part in ("state_dict", "encoder_state_dict"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part  # bit-identical


def test_ctrl_c_keeps_the_resume_state_and_the_run_goes_on(tail_store, tmp_path, monkeypatch):
    out, reference = tmp_path / "stopped", tmp_path / "ref"
    options = dict(seeds=(0,), epochs=4, batch_size=3, lrs=(LR,), train_blocks=2)
    every_epoch = dataclasses.replace(CPU, checkpoint_seconds=0)
    real = sweep_module.epoch_row

    def row(bar, label, epochs):
        inner = real(bar, label, epochs)

        def callback(end):
            inner(end)
            if end.epoch == 2:
                raise KeyboardInterrupt

        return callback

    monkeypatch.setattr(sweep_module, "epoch_row", row)
    with pytest.raises(KeyboardInterrupt):
        train_decoder(quick_sweep(tail_store, out, **options), ctx=every_epoch)
    monkeypatch.undo()
    assert (out / "resume-0.pt").exists()
    resumed = train_decoder(quick_sweep(tail_store, out, **options), ctx=every_epoch)
    plain = train_decoder(quick_sweep(tail_store, reference, **options), ctx=CPU)
    assert resumed.results[0].history == plain.results[0].history


def test_torchrun_spreads_tk_seeds_over_ranks(tail_store, tmp_path):
    options = dict(size=6, epochs=2, batch_size=3, val_size=3, train_blocks=1)
    single = train_decoder(quick_sweep(tail_store, tmp_path / "one", **options), ctx=CPU)
    options = [*SWEEP, "--seeds", "0,1", "--train-blocks", "1", "--out", tmp_path / "two"]
    result = run_torchrun("train-decoder", tail_store, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    for seed, ref in zip((0, 1), single.results, strict=True):
        ran = json.loads((tmp_path / "two" / f"seed-{seed}" / "results.json").read_text())
        assert ran["mode"] == "T1"
        np.testing.assert_allclose(ran["history"]["val_loss"], ref.history.val_loss, rtol=1e-5)


def test_a_tk_run_trains_on_the_selected_images_and_flags_degenerate_predictions(tail_store):
    with FeatureStore.open(tail_store) as store:
        chosen = tuple(store.ids[i] for i in store.indices("train")[-8:])  # not what seed 0's subset draws
    output = run(tail_store, "T1", train_ids=chosen)
    assert output.results.train_ids == list(chosen)
    assert isinstance(output.results.degenerate, list)  # judged from the run's own predictions


def test_compare_e2e_runs_the_spectrum_and_reports_it(tail_store, tmp_path):
    cfg = CompareConfig(
        store=str(tail_store),
        out=tmp_path,
        sizes=(8,),
        seeds=(0, 1),
        modes=("C", "T1", "T2", "P2", "E"),
        epochs=2,
        batch_size=4,
        val_size=3,
        lrs=(LR,),
    )
    comparison = compare_e2e(cfg, ctx=CPU)
    runs = {(r.mode, r.size, r.seed): r for r in comparison.results}
    assert len(runs) == 5 * 2
    t2, p2 = runs[("T2", 8, 0)], runs[("P2", 8, 0)]
    np.testing.assert_allclose(t2.history.val_loss, p2.history.val_loss, rtol=1e-5)
    trainable = [runs[(m, 8, 0)].trainable_parameters for m in ("C", "T1", "T2", "E")]
    assert trainable == sorted(trainable) and len(set(trainable)) == 4
    ran = json.loads((tmp_path / "runs" / "T2" / "size-8" / "seed-1" / "results.json").read_text())
    assert (ran["mode"], ran["train_blocks"]) == ("T2", 2)
    report = (tmp_path / "report.md").read_text()
    assert "## Between frozen and end to end" in report and "![" in report and "spectrum.png" in report
    assert "| 8 | T2 − C |" in report and "| 8 | P2 − E |" in report
    assert "| size | C | T1 | T2 | P2 | E |" in report
    assert (tmp_path / "spectrum.png").stat().st_size > 5000


def test_bad_input_is_one_line(tail_store, micro_store, synth_root, tmp_path, cli):
    out = tmp_path / "run"
    no_tokens = cli("train-decoder", micro_store, *SWEEP, "--train-blocks", "1", "--out", out)
    one_line_error(no_tokens, "holds no cached tokens", "--tail-tokens 1")
    k1 = tmp_path / "k1.zarr"
    extract(extract_config(synth_root, k1, views="identity", tail_tokens=1), ctx=CPU)
    too_many = cli("train-decoder", k1, *SWEEP, "--augment", "none", "--train-blocks", "2", "--out", out)
    one_line_error(too_many, "more than the 1 blocks", "--tail-tokens 2 or more")
    usage = (
        (["--train-blocks", "3"], "vit_micro has 2 blocks"),
        (["--lora-rank", "2"], "adapters go on trained encoder blocks"),
        (["--train-blocks", "0", "--lora-rank", "2"], "give --train-blocks k"),
        (["--train-blocks", "1", "--lora-rank", "0"], "--lora-rank 0 must be at least 1"),
        (
            ["--train-blocks", "1", "--lora-rank", "2", "--lora-alpha", "-1"],
            "--lora-alpha -1.0 must be a positive number",
        ),
        (["--train-blocks", "1", "--layers", "1"], "reads the encoder's final output"),
        (["--train-blocks", "1", "--grouped"], "drop --grouped"),
    )
    for options, fragment in usage:
        one_line_error(cli("train-decoder", tail_store, *SWEEP, *options, "--out", out), fragment, code=2)
    for options, fragment in ((["--modes", "C,T0"], "write C"), (["--modes", "C,E", "--lora-rank", "2"], "adapters")):
        one_line_error(cli("compare-e2e", tail_store, *options, "--out", tmp_path / "cmp"), fragment, code=2)
    assert not any(out.rglob("results.json"))


def test_lora_without_peft_says_how_to_install(tail_store, tmp_path, cli, monkeypatch):
    blocker = tmp_path / "site" / "peft"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no peft here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{blocker.parent}:{Path(__file__).parents[2]}")
    result = cli(
        "train-decoder", tail_store, *SWEEP, "--train-blocks", "1", "--lora-rank", "2", "--out", tmp_path / "r"
    )
    one_line_error(result, "pip install 'featcache[peft]'")
