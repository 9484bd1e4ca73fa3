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
