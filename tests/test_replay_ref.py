"""The replay regression gate: the bundled student still reproduces its references, and a changed weight is caught."""
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from selfdrive.modeld_fair.runner import MODEL_DIR, make_runner
from tools.fair.cli import main
from tools.fair.replay_ref import FieldDiff, compare, gate, load_ref, outside_tolerance, ref_path, save_ref
from tools.fair.samples import sample_paths


@pytest.mark.parametrize("segment", sample_paths(), ids=lambda p: p.name)
def test_bundled_student_matches_its_reference(segment, capsys):
  assert main(["replay", str(segment), "--ref", str(ref_path(segment))]) == 0
  assert "replay matches" in capsys.readouterr().out


def _perturbed_model(tmp_path, rel: float):
  """The bundled model folder with the largest weight of its first convolution kernel scaled by (1 + rel)."""
  model = onnx.load(MODEL_DIR / "student.onnx")
  init = next(t for t in model.graph.initializer if len(t.dims) == 4)
  w = numpy_helper.to_array(init).copy()
  j = np.unravel_index(int(np.argmax(np.abs(w))), w.shape)
  w[j] *= 1 + rel
  init.CopyFrom(numpy_helper.from_array(w, init.name))
  onnx.save(model, tmp_path / "student.onnx")
  shutil.copy(MODEL_DIR / "student.json", tmp_path / "student.json")
  return tmp_path


def test_a_small_change_of_one_weight_is_caught(tmp_path, capsys):
  seg = sample_paths()[0]
  model = _perturbed_model(tmp_path, rel=0.05)  # one of 1.2M weights, 5 %
  diffs = gate(seg, ref_path(seg), make_runner("onnxruntime", model), max_frames=2)
  assert all(isinstance(d, FieldDiff) for d in diffs)
  assert {"0000.ego.trans", "0000.lanes.y"} <= {d.field for d in diffs}  # continuous outputs, from the first frame
  assert main(["replay", str(seg), "--ref", str(ref_path(seg)), "--model", str(model), "--max-frames", "2"]) == 1
  out = capsys.readouterr().out
  assert "differs from" in out and f"  {diffs[0].field}:" in out


def test_update_ref_writes_what_the_gate_then_accepts(tmp_path, capsys):
  seg, ref = sample_paths()[1], tmp_path / "ref.npz"
  assert main(["replay", str(seg), "--ref", str(ref), "--update-ref", "--max-frames", "2"]) == 0
  fields, meta = load_ref(ref)
  assert meta["frames"] == 2 and meta["tol"] == 1e-3 and meta["segment"] == seg.name
  assert {k[:4] for k in fields} == {"0000", "0001"} and "0001.depth" in fields
  assert main(["replay", str(seg), "--ref", str(ref)]) == 0
  # an edited reference fails on exactly the edited field
  fields["0001.ego.trans"] = fields["0001.ego.trans"] + 0.5
  save_ref(ref, fields, meta)
  assert main(["replay", str(seg), "--ref", str(ref)]) == 1
  assert "\n  0001.ego.trans: " in capsys.readouterr().out


def test_tolerance_rule_is_process_replays():
  tol = 1e-3
  a = np.array([0.0, 0.0, 1000.0, 1000.0, np.inf, np.inf, np.nan, np.nan, 1.0])
  b = np.array([1e-3, 1.1e-3, 1001.0, 1001.2, np.inf, 1e30, np.nan, 1.0, -1.0])
  assert outside_tolerance(a, b, tol).tolist() == [False, True, False, True, False, True, False, True, True]


def test_compare_names_missing_reshaped_and_text_fields():
  ref = {"0000.depth": np.ones((2, 2)), "0000.lanes.y": np.zeros((4, 3)), "0000.invalid_reason": np.array("none")}
  new = {"0000.depth": np.ones((2, 3)), "0000.objects.box": np.zeros((0, 4)), "0000.invalid_reason": np.array("x")}
  got = {d.field: (d.ref, d.new) for d in compare(ref, new)}
  assert got == {"0000.depth": ("shape (2, 2)", "shape (2, 3)"), "0000.invalid_reason": ("'none'", "'x'"),
                 "0000.lanes.y": ("present", "absent"), "0000.objects.box": ("absent", "present")}
  d = compare({"0000.lanes.y": np.array([1.0, 2.0, 3.0])}, {"0000.lanes.y": np.array([1.0, 2.5, 3.01])})[0]
  assert (d.bad, d.total, d.ref, d.new) == (2, 3, "2", "2.5")  # the worst value is shown


def test_a_bad_reference_is_a_one_line_error(tmp_path, capsys):
  seg = sample_paths()[0]
  (tmp_path / "junk.npz").write_bytes(b"not an npz")
  for ref in (tmp_path / "missing.npz", tmp_path / "junk.npz"):
    assert main(["replay", str(seg), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fair replay: error: reference") and "\n" not in err


def test_depth_allows_one_step_of_its_message_code():
  ref = {"0000.depth": np.array([150.0]), "0000.lanes.y": np.array([150.0])}
  new = {"0000.depth": np.array([150.7]), "0000.lanes.y": np.array([150.7])}  # one UInt16 code step at 150 m
  assert [d.field for d in compare(ref, new)] == ["0000.lanes.y"]
