import pytest

from featcache.demo import DemoConfig, run_demo
from tests.helpers import CPU


def test_demo_pipeline_end_to_end_tiny(tmp_path):
    cfg = DemoConfig(
        out=tmp_path / "demo",
        n_train=10,
        n_val=4,
        n_test=4,
        pretrain_epochs=1,
        sizes=(6, 3),
        seeds=(0, 1),
        epochs=2,
    )
    result = run_demo(cfg, ctx=CPU)
    assert set(result.steps) == {"synth", "pretrain", "extract", "compare-e2e"}
    report = result.comparison.report.read_text()
    assert "epochs shortened to 2" in report and "SGD learning rate 0.05" in report
    assert {r.mode for r in result.comparison.results} == {"E", "F", "C"}
    assert (tmp_path / "demo" / "encoder_reconstructions.png").exists()


@pytest.mark.slow
def test_demo_default_command(tmp_path, cli):
    result = cli("demo", "--out", tmp_path / "demo", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "demo finished in" in result.stdout and (tmp_path / "demo" / "report" / "report.md").exists()


def test_demo_with_an_encoder_skips_pretraining(tmp_path, monkeypatch):
    import featcache.demo as demo

    seen = {}

    def no_pretrain(*args, **kwargs):
        raise AssertionError("pretrained although an encoder was given")

    monkeypatch.setattr(demo, "pretrain", no_pretrain)
    monkeypatch.setattr(demo, "extract", lambda cfg, ctx: seen.setdefault("encoder", cfg.encoder))
    monkeypatch.setattr(demo, "compare_e2e", lambda cfg, ctx: "comparison")
    encoder = tmp_path / "enc.pt"
    result = run_demo(DemoConfig(out=tmp_path / "demo", data=tmp_path, encoder=encoder), ctx=CPU)
    assert seen["encoder"] == str(encoder) and result.comparison == "comparison"
