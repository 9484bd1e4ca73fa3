"""The README's first two commands are the interface a new user runs; CI must run the second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_exactly_the_readme_test_command():
    setup_and_run, setup_and_test = readme_commands()[:2]
    assert "pytest" in setup_and_test and "featcache" in setup_and_run
    assert setup_and_test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_python_api_snippet_runs_on_the_cpu(micro_store, capsys):
    """The README's Python API as shown, on the session's store: 8 training images, 2 epochs, on the CPU."""
    snippet = re.search(r"## Python API\n\n```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert 'FeatureStore.open("isic2017.zarr")' in snippet and "TrainConfig(size=20, seed=0)" in snippet
    snippet = snippet.replace("isic2017.zarr", str(micro_store)).replace("size=20", "size=8, epochs=2, val_size=4")
    exec(compile(snippet, "README.md", "exec"), {})
    iou, best_epoch = capsys.readouterr().out.split()
    assert 0 <= float(iou) <= 1 and int(best_epoch) in (1, 2)
