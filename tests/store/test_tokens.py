"""The ``tokens`` array (``extract --tail-tokens K``): each view's tokens entering the encoder's last K blocks, with
the checksums, missing-chunk detection, verify --repair, resume and torchrun division of ``features``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.models import build_encoder
from featcache.models.tail import tail_tokens
from featcache.store import FeatureStore
from featcache.store.encode import view_batch
from featcache.store.extract import extract
from featcache.store.integrity import MISSING
from featcache.store.verify import verify_store
from tests.helpers import CPU, MICRO_EXTRACT, assert_same_store, extract_config, run_then_sigkill, run_torchrun
from tests.store.test_verify import copy_store, flip_bit

#: vit_micro at 64 px: one class token and 4 x 4 patches, 32 channels.
TOKENS = 17


@pytest.fixture(scope="module")
def token_stores(synth_root, tmp_path_factory) -> dict[str, Path]:
    """`extract_config` with ``--tail-tokens 1`` (float16), once per backend."""
    folder = tmp_path_factory.mktemp("tokens")
    stores = {suffix: folder / f"tokens{suffix}" for suffix in (".zarr", ".h5")}
    for out in stores.values():
        extract(extract_config(synth_root, out, tail_tokens=1), ctx=CPU)
    return stores


def assert_same_tokens(a: Path | str, b: Path | str) -> None:
    """Both stores are complete and hold the same values in every array, ``tokens`` included."""
    assert_same_store(a, b)
    with FeatureStore.open(a) as left, FeatureStore.open(b) as right:
        assert np.array_equal(left.read("tokens"), right.read("tokens"))


def test_tokens_are_those_entering_the_last_blocks_on_every_view(token_stores, clean_stores, store_suffix):
    encoder = build_encoder("vit_micro", "random", seed=0)
    with FeatureStore.open(token_stores[store_suffix]) as store, FeatureStore.open(clean_stores[store_suffix]) as plain:
        assert (store.tail_tokens, store.record.n_tokens, plain.tail_tokens) == (1, TOKENS, 0)
        rows = store.indices("test")
        tokens = store.tokens(rows)
        assert tokens.shape == (6, 4, TOKENS, 32) and tokens.dtype == torch.float16
        with torch.no_grad():
            views = view_batch(store.images(rows).float() / 255, store.view_names)
            expected = tail_tokens(encoder, views, 1).unflatten(0, (6, 4))
        torch.testing.assert_close(tokens.float(), expected, rtol=1e-3, atol=1e-3)  # float16 rounding
        assert torch.equal(store.tokens(rows, identity_only=True), tokens[:, :1])
        # The same pass: the features are bit for bit those of a store without tokens.
        assert np.array_equal(store.read("features"), plain.read("features"))
    with FeatureStore.open(clean_stores[store_suffix]) as plain, pytest.raises(FeatcacheError, match="--tail-tokens"):
        plain.tokens([0])


def test_a_timm_encoder_stores_its_prefix_tokens_too(synth_root, tmp_path):
    pytest.importorskip("timm")
    kwargs = {"depth": 2, "embed_dim": 32, "num_heads": 2, "reg_tokens": 2}
    out = tmp_path / "timm.zarr"
    timm = {"encoder": "timm:vit_tiny_patch16_224", "encoder_weights": "random", "model_kwargs": kwargs}
    cfg = extract_config(synth_root, out, tail_tokens=2, dtype="float32", **timm)
    extract(cfg, ctx=CPU)
    encoder = cfg.encoder_spec().build()
    with FeatureStore.open(out) as store:
        rows = store.indices("val")
        tokens = store.tokens(rows, identity_only=True)[:, 0]
        assert tokens.shape == (6, 3 + 16, 32) and store.record.n_tokens == 19  # class + 2 registers + 4 x 4
        with torch.no_grad():
            torch.testing.assert_close(tokens, tail_tokens(encoder, store.images(rows).float() / 255, 2))


def test_damaged_tokens_are_found_repaired_and_recomputed(synth_root, token_stores, tmp_path, store_suffix):
    reference = token_stores[store_suffix]
    path = copy_store(reference, tmp_path / f"s{store_suffix}")
    flip_bit(path, "tokens", 5)
    if store_suffix == ".zarr":
        (path / "tokens" / "c" / "4" / "0" / "0" / "0").unlink()  # rows 16-19
        with pytest.raises(FeatcacheError, match=r"tokens rows 16-19 \(missing\)"):
            FeatureStore.open(path)
    with pytest.raises(FeatcacheError, match="is damaged: tokens row"):
        FeatureStore.open(path, allow_incomplete=True).tokens([5])
    found = verify_store(path)
    assert {d.array for d in found.damages} == {"tokens"}
    assert (MISSING in {d.what for d in found.damages}) == (store_suffix == ".zarr")
    repaired = verify_store(path, repair=True)
    assert repaired.repaired == ([(4, 8), (16, 20)] if store_suffix == ".zarr" else [(4, 8)])
    report = extract(extract_config(synth_root, path, tail_tokens=1), ctx=CPU)
    assert report.resumed and report.computed == 4 * len(repaired.repaired)
    assert verify_store(path).clean
    assert_same_tokens(path, reference)


def test_sigkill_then_rerun_equals_uninterrupted(synth_root, token_stores, tmp_path):
    out = tmp_path / "killed.zarr"
    run_then_sigkill(f"""
        from featcache.store.extract import extract
        from tests.helpers import CPU, extract_config

        def die_at_block(start, stop):
            if stop >= 12:
                die()

        extract(extract_config({str(synth_root)!r}, {str(out)!r}, tail_tokens=1), ctx=CPU, on_block=die_at_block)
    """)
    report = extract(extract_config(synth_root, out, tail_tokens=1), ctx=CPU)
    assert report.resumed and 0 < report.computed < 24
    assert_same_tokens(out, token_stores[".zarr"])


def test_another_tail_is_another_extraction(synth_root, token_stores, clean_stores, tmp_path):
    path = copy_store(token_stores[".zarr"], tmp_path / "s.zarr")
    with pytest.raises(FeatcacheError, match=r"tail_tokens: 1 -> 2.*--overwrite"):
        extract(extract_config(synth_root, path, tail_tokens=2), ctx=CPU)
    plain = copy_store(clean_stores[".zarr"], tmp_path / "plain.zarr")
    with pytest.raises(FeatcacheError, match=r"tail_tokens: None -> 1"):
        extract(extract_config(synth_root, plain, tail_tokens=1), ctx=CPU)
    extract(extract_config(synth_root, path, tail_tokens=2, overwrite=True), ctx=CPU)
    with FeatureStore.open(path) as store:
        assert store.tail_tokens == 2 and store.tokens([0]).shape == (1, 4, TOKENS, 32)


def test_torchrun_two_cpu_ranks_equal_one_process(synth_root, token_stores, tmp_path):
    out = tmp_path / "ranks.zarr"
    result = run_torchrun("extract", synth_root, "--out", out, *MICRO_EXTRACT, "--tail-tokens", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_tokens(out, token_stores[".zarr"])


def test_info_shows_the_tail_and_bad_tails_are_refused(synth_root, token_stores, tmp_path, cli):
    summary = json.loads(cli("info", token_stores[".h5"], "--json").stdout)
    assert (summary["tail_tokens"], summary["n_tokens"]) == (1, TOKENS)
    assert summary["shapes"]["tokens"] == [24, 4, TOKENS, 32] and summary["tokens_bytes"] == 24 * 4 * TOKENS * 32 * 2
    table = cli("info", token_stores[".h5"]).stdout
    assert f"the {TOKENS} tokens entering the last 1 blocks" in table
    out = tmp_path / "bad.zarr"
    for k, fragment in (("3", "vit_micro has 2 blocks"), ("0", "--tail-tokens")):
        bad = cli("extract", synth_root, "--out", out, *MICRO_EXTRACT, "--tail-tokens", k)
        assert bad.returncode == 2 and fragment in bad.stderr, bad.stderr
    assert not out.exists()
