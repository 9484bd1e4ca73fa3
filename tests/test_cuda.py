"""The CUDA paths (bf16 autocast, channels_last, pinned memory, GPU-resident store, grouped seeds,
CUDA graphs, concurrent sizes, resume, the encoder modes, pretraining, predict): skipped without a GPU.

Under bf16 autocast, runs that take different kernels (grouped against separate, resumed against
uninterrupted with cuDNN's autotuning) agree to bf16's precision, not bit for bit: the tolerances
below are loose enough for that and far tighter than what a wrong slice or a lost state gives.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.core.context import Context
from featcache.core.runtime import autocast, placement
from featcache.models import EncoderSpec, build_decoder, build_encoder
from featcache.results import PredictConfig
from featcache.results.predict import predict
from featcache.store import FeatureStore
from featcache.store.extract import extract
from featcache.train import compare_e2e, train_decoder
from featcache.train.graphs import EpochGraph
from featcache.train.pretrain import pretrain
from featcache.train.resume import Checkpointer
from featcache.train.run import train_from_store, train_group_from_store, train_mode
from featcache.train.sizes import SizeGroup, train_sizes_from_store
from tests.helpers import CPU, extract_config, quick_compare, quick_pretrain, quick_sweep, quick_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = torch.device("cuda")
#: The GPU's context: CUDA graphs on (as by default); `EAGER` without them.
GPU = Context(device=DEVICE, cuda_graphs=True, progress=False)
EAGER = dataclasses.replace(GPU, cuda_graphs=False)


@pytest.fixture
def captures(monkeypatch):
    """Every CUDA graph capture the training loop tries: (pass name, captured)."""
    log = []
    capture = EpochGraph._capture

    def logged(self, inputs):
        captured = capture(self, inputs)
        log.append((self.name, captured))
        return captured

    monkeypatch.setattr(EpochGraph, "_capture", logged)
    return log


def test_extract_on_cuda_matches_cpu(synth_root, micro_store, tmp_path):
    out = tmp_path / "cuda.zarr"
    extract(extract_config(synth_root, out, dtype="float32"), ctx=GPU)
    with FeatureStore.open(out) as gpu, FeatureStore.open(micro_store) as cpu:
        assert gpu.record.extraction.device.startswith(DEVICE.type)
        a, b = gpu.features(np.arange(gpu.n)), cpu.features(np.arange(cpu.n))
        # bf16 autocast on the GPU: close to the float32 CPU features, not equal.
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()
        assert cos > 0.99
        assert np.array_equal(gpu.read("images"), cpu.read("images")) and np.array_equal(
            gpu.read("masks"), cpu.read("masks")
        )


def test_store_split_is_resident_on_the_gpu(micro_store):
    with FeatureStore.open(micro_store) as store:
        split = store.load_split("train", device=DEVICE)
        assert split.features.device.type == DEVICE.type and split.masks.device.type == DEVICE.type
    if DEVICE.type == "cuda":
        assert placement(DEVICE, 1 << 60).type == "cpu"  # too large: stays on the CPU


def test_train_decoder_on_cuda(micro_store):
    with FeatureStore.open(micro_store) as store:
        run = train_from_store(store, quick_train(epochs=4, batch_size=3), DEVICE)
    assert run.results.device.startswith(DEVICE.type) and 0 <= run.results.test.iou <= 1
    assert all(np.isfinite(run.results.history.val_loss))
    assert all(v.device.type == "cpu" for v in run.checkpoint.state_dict.values())


def test_study_scale_grouped_decoder_step_under_bf16_channels_last():
    """The shape of the GPU sweep (5 seeds grouped, ViT-B/16 width 768, 224 px) trains under the settings of
    `fit_group`."""
    decoder = build_decoder("sd", 768, groups=5).to(DEVICE).to(memory_format=torch.channels_last)
    features = torch.randn(2, 5 * 768, 14, 14, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with autocast(DEVICE):
        logits = decoder(features)
    assert logits.shape == (2, 5, 224, 224)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), torch.zeros_like(logits, dtype=torch.float32)
    )
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder.parameters())


def test_grouped_seeds_on_cuda_match_separate_runs(micro_store):
    cfgs = [quick_train(epochs=4, batch_size=3, seed=s) for s in (0, 1, 2)]
    with FeatureStore.open(micro_store) as store:
        grouped = train_group_from_store(store, cfgs, ctx=GPU)
        separate = [train_from_store(store, c, DEVICE) for c in cfgs]
    for g, s in zip(grouped, separate, strict=True):
        assert g.results.train_ids == s.results.train_ids
        np.testing.assert_allclose(g.results.history.train_loss, s.results.history.train_loss, rtol=3e-2)
        np.testing.assert_allclose(g.results.history.val_loss, s.results.history.val_loss, rtol=3e-2)
    # Different seeds did train differently: the groups did not collapse into one.
    assert grouped[0].results.history.train_loss != grouped[1].results.history.train_loss


def test_a_pass_replayed_as_a_cuda_graph_computes_what_the_eager_pass_computes():
    def make():
        state = torch.zeros(4, device=DEVICE)

        def body(x, absent):  # an input may be None (a run without flips), and stays None
            assert absent is None
            state.mul_(0.5).add_(x.sum(dim=0))  # side effects on the device are replayed too
            return state * 2

        return state, body

    inputs = [torch.randn(3, 4, device=DEVICE) for _ in range(5)]
    eager_state, eager_body = make()
    graph_state, graph_body = make()
    graphed = EpochGraph(graph_body, "test", torch.cuda.Stream(DEVICE), enabled=True)
    graphed.stream.wait_stream(torch.cuda.current_stream(DEVICE))  # the inputs were made on the default stream
    with torch.cuda.stream(graphed.stream):
        for x in inputs:
            torch.testing.assert_close(graphed(x, None), eager_body(x, None))
    torch.cuda.synchronize()
    assert graphed.graph is not None and graphed.calls == 5
    torch.testing.assert_close(graph_state, eager_state)
    graphed.close()
    assert graphed.graph is None


def test_a_pass_that_cannot_be_captured_says_so_and_runs_eagerly(capsys):
    def body(x):
        return x * float(x.sum().item())  # a host synchronisation: not allowed in a capture

    graphed = EpochGraph(body, "the test pass", torch.cuda.Stream(DEVICE), enabled=True)
    x = torch.arange(3.0, device=DEVICE)
    graphed.stream.wait_stream(torch.cuda.current_stream(DEVICE))
    with torch.cuda.stream(graphed.stream):
        outputs = [graphed(x) for _ in range(3)]
    assert all(torch.equal(out, x * 3) for out in outputs) and graphed.graph is None and not graphed.enabled
    assert "the test pass: not captured as a CUDA graph" in capsys.readouterr().err
    graphed.close()
    # The process can still capture and replay after the failed capture.
    ok = EpochGraph(lambda v: v * 2, "next", torch.cuda.Stream(DEVICE), enabled=True)
    ok.stream.wait_stream(torch.cuda.current_stream(DEVICE))
    with torch.cuda.stream(ok.stream):
        assert [ok(x).tolist() for _ in range(3)] == [[0.0, 2.0, 4.0]] * 3
    assert ok.graph is not None
    torch.cuda.empty_cache()


@pytest.mark.parametrize("lrs", [(0.01, 0.01), (0.01, 0.03)], ids=["seeds", "grid"])
def test_training_replayed_as_cuda_graphs_matches_eager_training(micro_store, captures, lrs):
    cfgs = [quick_train(epochs=4, batch_size=3, seed=s, lr=lr) for s, lr in zip((0, 1), lrs, strict=True)]
    with FeatureStore.open(micro_store) as store:
        eager = train_group_from_store(store, cfgs, ctx=EAGER)
        assert captures == []
        graphed = train_group_from_store(store, cfgs, ctx=GPU)
    # The training epoch (8 images in batches of 3: a short last batch) and the validation pass.
    assert [captured for _, captured in captures] == [True, True]
    for e, g in zip(eager, graphed, strict=True):
        assert e.results.train_ids == g.results.train_ids
        np.testing.assert_allclose(g.results.history.train_loss, e.results.history.train_loss, rtol=3e-2)
        np.testing.assert_allclose(g.results.history.val_loss, e.results.history.val_loss, rtol=3e-2)
    assert graphed[0].results.history.train_loss != graphed[1].results.history.train_loss


def test_sizes_trained_concurrently_on_cuda_match_sizes_trained_alone(micro_store, captures):
    with FeatureStore.open(micro_store) as store:
        cfgs = {size: [quick_train(size=size, seed=s, epochs=4) for s in (0, 1)] for size in (8, 4)}
        groups = [SizeGroup(runs[0].plan(store), runs) for runs in cfgs.values()]
        alone = train_sizes_from_store(store, groups, ctx=GPU, concurrent=False)
        together = train_sizes_from_store(store, groups, ctx=GPU, concurrent=True)
    assert len(captures) == 8 and all(captured for _, captured in captures)
    for group_alone, group_together in zip(alone, together, strict=True):
        for a, t in zip(group_alone, group_together, strict=True):
            assert a.results.train_ids == t.results.train_ids
            np.testing.assert_allclose(t.results.history.val_loss, a.results.history.val_loss, rtol=3e-2)


def test_train_decoder_groups_seeds_on_cuda_and_its_checkpoint_predicts_on_either_device(
    micro_store, synth_root, tmp_path
):
    sweep = train_decoder(quick_sweep(micro_store, tmp_path / "run", epochs=4, batch_size=3), ctx=GPU)
    assert all(r.group.seeds == [0, 1] for r in sweep.results)  # the default: grouped on CUDA only
    assert all(r.cuda_graphs for r in sweep.results)
    images = synth_root / "ISIC-2017_Test_v2_Data"
    on_gpu = predict(PredictConfig(run_dir=tmp_path / "run", images=[images], out=tmp_path / "gpu"), ctx=GPU)
    on_cpu = predict(PredictConfig(run_dir=tmp_path / "run", images=[images], out=tmp_path / "cpu"), ctx=CPU)
    for a, b in zip(on_gpu, on_cpu, strict=True):
        agree = (np.asarray(Image.open(a.mask)) == np.asarray(Image.open(b.mask))).mean()
        assert agree > 0.95


def test_interrupted_grouped_run_resumes_on_cuda(micro_store, tmp_path):
    cfgs = [quick_train(epochs=4, batch_size=3, seed=s) for s in (0, 1)]

    def stop_after_two(end):
        if end.epoch == 2:
            raise KeyboardInterrupt

    checkpointer = Checkpointer(tmp_path / "resume.pt", {"test": 1}, every_seconds=0)
    with FeatureStore.open(micro_store) as store:
        whole = train_group_from_store(store, cfgs, ctx=GPU)
        with pytest.raises(KeyboardInterrupt):
            train_group_from_store(store, cfgs, ctx=GPU, progress=stop_after_two, checkpointer=checkpointer)
        resumed = train_group_from_store(store, cfgs, ctx=GPU, checkpointer=checkpointer)
    for w, r in zip(whole, resumed, strict=True):
        assert len(r.results.history.val_loss) == cfgs[0].epochs
        np.testing.assert_allclose(r.results.history.val_loss, w.results.history.val_loss, rtol=3e-2)


@pytest.mark.parametrize("mode", ["E", "F"])
def test_encoder_modes_on_cuda(micro_store, captures, mode):
    with FeatureStore.open(micro_store) as store:
        encoder = EncoderSpec.recorded(store.record.encoder).build()
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        cfg = quick_train(epochs=4, batch_size=3, lr=0.01)
        encoders = {"ssl": encoder, "init": encoder}
        run = train_mode(store, mode, [cfg], plan=cfg.plan(store), encoders=encoders, ctx=GPU)[0]
        results, logits = run.results, run.test_logits
    assert results.device.startswith(DEVICE.type) and logits.device.type == "cpu"
    assert all(np.isfinite(results.history.train_loss)) and 0 <= results.test.iou <= 1
    # train_mode trains a copy: the encoder handed in is left as it was, in E mode too.
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    # The encoder's steps are captured with the decoder's, so E, F and C get the same treatment.
    assert [captured for _, captured in captures] == [True, True]


def test_compare_e2e_on_cuda_writes_the_report(micro_store, tmp_path):
    cfg = quick_compare(micro_store, tmp_path / "cmp", modes=("E", "F", "C"))
    comparison = compare_e2e(cfg, ctx=GPU)
    assert len(comparison.results) == 3 * 2 * 2 and (comparison.out / "report.md").exists()
    assert all(r.cuda_graphs for r in comparison.results)


def test_no_cuda_graphs_trains_eagerly(micro_store, tmp_path, captures):
    sweep = train_decoder(quick_sweep(micro_store, tmp_path / "run"), ctx=EAGER)
    assert captures == [] and not any(r.cuda_graphs for r in sweep.results)


def test_pretrain_on_cuda_writes_a_checkpoint_the_cpu_loads(synth_root, tmp_path):
    cfg = quick_pretrain(synth_root, tmp_path / "ss.pt", epochs=2)
    pretrain(cfg, ctx=GPU)
    encoder = build_encoder("vit_micro", str(cfg.out))
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in encoder.state_dict().values())


@pytest.fixture(scope="module")
def tail_store(synth_root, tmp_path_factory):
    """float32, flip views and the tokens entering both of vit_micro's blocks, extracted on the CPU."""
    out = tmp_path_factory.mktemp("tail") / "tail.zarr"
    extract(extract_config(synth_root, out, dtype="float32", tail_tokens=2), ctx=CPU)
    return out


@pytest.mark.parametrize("mode,lora", [("T1", None), ("P1", None), ("T2", 2)], ids=["T1", "P1", "T2-lora"])
def test_tk_and_pk_on_cuda_replay_as_graphs_unless_lora_on_torchvision(tail_store, captures, mode, lora):
    from featcache.train.tail_run import train_any_mode

    if lora:
        pytest.importorskip("peft")
    with FeatureStore.open(tail_store) as store:
        encoders = {"ssl": EncoderSpec.recorded(store.record.encoder).build()}
        cfg = quick_train(epochs=4, batch_size=3, lr=0.05, train_blocks=int(mode[1]), lora_rank=lora)
        plan = cfg.plan(store)
        eager = train_any_mode(store, mode, [cfg], plan=plan, encoders=encoders, ctx=EAGER)[0].results
        assert captures == []
        graphed = train_any_mode(store, mode, [cfg], plan=plan, encoders=encoders, ctx=GPU)[0].results
    # peft's MultiheadAttention layer swaps merged weights around every forward: LoRA on torchvision runs eagerly.
    assert [captured for _, captured in captures] == ([] if lora else [True, True])
    assert graphed.cuda_graphs is (lora is None) and graphed.mode == mode
    np.testing.assert_allclose(graphed.history.train_loss, eager.history.train_loss, rtol=3e-2)
    np.testing.assert_allclose(graphed.history.val_loss, eager.history.val_loss, rtol=3e-2)
