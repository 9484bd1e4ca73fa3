"""featcache.core.context: the execution context, resolved once where a command starts."""

import pytest
import torch
import torch.distributed as tdist

from featcache.core.context import Context, Invocation
from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.ranks import Distributed


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without a visible GPU, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_cpu_keeps_the_options_and_turns_cuda_graphs_off(no_cuda):
    ctx = Context.resolve("cpu", cuda_graphs=True, progress=False, checkpoint_seconds=7.5)
    assert ctx.device == torch.device("cpu") and ctx.cuda_graphs is False
    assert ctx.progress is False and ctx.checkpoint_seconds == 7.5
    assert ctx.ranks == Distributed(device=torch.device("cpu")) and not ctx.ranks.initialised


def test_trackers_and_the_command_line_ride_on_the_context(no_cuda):
    assert (Context.resolve("cpu").track, Context.resolve("cpu").invocation) == ((), None)
    invocation = Invocation(("featcache", "train-decoder", "s.zarr"), 'store = "s.zarr"\n')
    ctx = Context.resolve("cpu", track=["mlflow", "tensorboard"], invocation=invocation)
    assert ctx.track == ("mlflow", "tensorboard") and ctx.invocation is invocation


def test_auto_without_cuda_is_the_cpu_even_for_ranks_without_torchrun(no_cuda):
    for ranks in (False, True):
        ctx = Context.resolve("auto", ranks=ranks)
        assert ctx.device.type == "cpu" and ctx.cuda_graphs is False
        assert (ctx.ranks.rank, ctx.ranks.world_size, ctx.ranks.initialised) == (0, 1, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_keeps_cuda_graphs_as_asked():
    assert Context.resolve("cuda").cuda_graphs is True and Context.resolve("cuda").device.type == "cuda"
    assert Context.resolve("cuda", cuda_graphs=False).cuda_graphs is False


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "mps"])
def test_a_device_that_is_never_valid_is_a_usage_error(no_cuda, spec):
    with pytest.raises(OptionError, match=rf"^--device '{spec}' is not one of auto, cpu, cuda, cuda:N$"):
        Context.resolve(spec)


def test_cuda_without_a_gpu_is_bad_input_not_a_usage_error(no_cuda):
    with pytest.raises(FeatcacheError, match="--device cuda:1: no CUDA GPU is visible here; use --device cpu") as info:
        Context.resolve("cuda:1")
    assert not isinstance(info.value, OptionError)


def test_is_main_is_rank_0():
    assert Context().is_main
    assert Context(ranks=Distributed(rank=0, world_size=2)).is_main
    assert not Context(ranks=Distributed(rank=1, world_size=2)).is_main


def test_close_leaves_the_process_group_once(tmp_path):
    Context().close()  # no process group: nothing to leave
    tdist.init_process_group("gloo", store=tdist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        ctx = Context(ranks=Distributed(rank=0, world_size=1, initialised=True))
        ctx.close()
        assert not tdist.is_initialized() and not ctx.ranks.initialised
        ctx.close()  # idempotent
        assert not tdist.is_initialized()
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
