"""Every notebook runs top to bottom offline (code cells executed in order in one namespace, no Jupyter needed)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells
    for cell in cells:
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}:{cells.index(cell)}", "exec"), namespace)


def test_there_is_a_notebook():
    assert NOTEBOOKS
