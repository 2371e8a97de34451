"""Every notebook (notebooks/*.py, jupytext percent format) executes top to bottom on its small default settings."""
from pathlib import Path

import jupytext
import nbclient
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_there_are_notebooks():
  assert {p.stem for p in NOTEBOOKS} >= {"replay_messages", "train_student"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
  nb = jupytext.read(path)
  # an error in any cell raises CellExecutionError naming the cell
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs), \
    f"{path.name} drew no plot"
