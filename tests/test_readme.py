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
