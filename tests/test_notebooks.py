"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient), and the committed file keeps its outputs.

The kernel executes a copy in a temporary folder, so the test never rewrites the committed notebook; `make
notebooks` is the step that refreshes the committed outputs (pictures included) for a reader who does not run it.
"""

import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
PROBE = "import sys, rgap_bench\nprint(sys.executable)\nprint(rgap_bench.__file__)"


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def debug_sweep(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep notebook 02 runs in its first cell (`experiment=debug attack=rgap`, W&B offline), run in this
    process, where torch and the package are imported already; the kernel then analyses it (RGAP_SWEEP)."""
    from rgap_bench.__main__ import main

    argv = ["rgap_bench", "-m", "experiment=debug", "attack=rgap", f"hydra.sweep.dir={sweep}"]
    monkeypatch.setattr(sys, "argv", [*argv, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    main()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes_in_a_kernel_of_this_python(path, tmp_path, monkeypatch):
    """Notebook 02 analyses a sweep run here; `test_sweep_notebook_runs_its_own_sweep` (slow) runs it as committed."""
    if path.name.startswith("02_"):
        debug_sweep(tmp_path / "sweep", monkeypatch)
        monkeypatch.setenv("RGAP_SWEEP", str(tmp_path / "sweep"))
    execute(path, tmp_path, monkeypatch)


@pytest.mark.slow
def test_sweep_notebook_runs_its_own_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("RGAP_SWEEP", raising=False)
    execute(ROOT / "notebooks" / "02_sweep_analysis.ipynb", tmp_path, monkeypatch)


def execute(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committed = path.read_bytes()
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))  # which interpreter and which checkout ran it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    printed = "".join(out.text for out in notebook.cells[-1].outputs if out.get("name") == "stdout")
    executable, package = printed.split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(package).resolve().is_relative_to(ROOT)
    assert all(cell.execution_count is not None for cell in code_cells(notebook))
    assert path.read_bytes() == committed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_keeps_its_outputs(path):
    cells = code_cells(nbformat.read(path, as_version=4))
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), "run it top to bottom once"
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "the picture is not saved in the file"
    assert str(ROOT) not in path.read_text()  # no machine paths in what is committed


def test_there_is_a_notebook():
    assert NOTEBOOKS
