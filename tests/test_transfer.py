"""CI's miniature of issue 5's teacher -> student experiment: the whole pipeline (generate, cache, train teachers on
ground truth, load them like official weights, fair label, distil without ground truth, GT reference, DoRA vs full,
evaluate) at toy sizes, checking that the metrics move the right way. ~2 minutes: marked slow (CI runs -m slow)."""
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_transfer_miniature_learns_and_reports(tmp_path):
  from tools.fair.experiments.transfer import main
  assert main(["--preset", "mini", "--out", str(tmp_path)]) == 0   # 1 when a check failed
  m = json.loads((tmp_path / "metrics.json").read_text())
  assert m["failed_checks"] == []
  rows = m["rows"]
  # the distilled student learned the teachers' classes; it was never shown ground truth
  assert rows["student (distilled)"]["miou"] > rows["student (untrained)"]["miou"]
  assert all(t["loss_last20"] < t["loss_first20"] for t in m["teachers"].values())
  # DoRA trains a small share of the weights
  s = m["students"]
  assert s["dora"]["trainable_params"] < 0.2 * s["full_finetune"]["trainable_params"]
  report = (tmp_path / "report.md").read_text()
  assert "student (distilled)" in report and "DoRA" in report and "machine:" in report
  # the label store the student learnt from verifies, and the teachers reload through the official path
  from tools.fair.labels.store import LabelStore
  store = LabelStore(tmp_path / "labels")
  assert {e.teacher for e in store.entries()} == {"dpt-depth", "dinov2-seg", "dinov2"}
  for e in store.entries():
    store.verify(e)
