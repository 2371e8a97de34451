"""Bad inputs of the tools: damaged teacher weights, a scale that leaves no pixel, an --out that is a file, a
label manifest entry without its keys, a --resume of another recipe. Each is one line, exit 2."""
import json

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL
from tools.fair.cli import main
from tools.fair.labels.store import Labels, LabelStore, ShardInfo
from tools.fair.sim.cli import write_segment
from tools.fair.sim.world import make_scene
from tests.faults.test_tools_train import GOOD, _train

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  return write_segment(make_scene(6, 4 / 20, "mici", "city"), tmp_path_factory.mktemp("seg"), progress=False)


def one_line_error(capsys, rc: int, *needles: str) -> str:
  err = capsys.readouterr().err.strip()
  last = err.splitlines()[-1] if err else ""   # above it at most a library's progress bar
  assert rc == 2 and "Traceback" not in err and last.startswith("fair "), err
  assert all(n in last for n in needles), err
  return last


def _label(seg, weights, out, *extra) -> int:
  return main(["label", str(seg), "--teachers", "dinov2", "--weights", str(weights), "--out", str(out), "--quiet",
               *extra])


@pytest.mark.parametrize("damage, needle", [
  (("model.safetensors", lambda b: b[:len(b) // 2]), "model.safetensors"),
  (("model.safetensors", lambda b: b[:7]), "model.safetensors"),
  (("config.json", lambda b: b[:len(b) // 2]), "config.json: not valid JSON"),
  (("config.json", lambda b: b"[" * 100_000), "config.json: not valid JSON"),
  (("config.json", lambda b: b"[1, 2]"), "config.json: not a JSON object"),
], ids=["safetensors-half", "safetensors-7-bytes", "config-half", "config-nested", "config-list"])
def test_damaged_teacher_weights_name_the_file(segment, weights, tmp_path, capsys, damage, needle):
  import shutil
  w = shutil.copytree(weights, tmp_path / "w")
  name, cut = damage
  f = w / "dinov2" / name
  f.write_bytes(cut(f.read_bytes()))
  one_line_error(capsys, _label(segment, w, tmp_path / "store"), needle, str(w / "dinov2"))
  assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("argv", [
  ["label", "{seg}", "--teachers", "dinov2", "--weights", "{w}", "--out", "{tmp}/s", "--scale", "0.001"],
  ["lanes", "{seg}", "--tracker", "lk", "--init", "gt", "--out", "{tmp}/s", "--scale", "0.001"],
  ["inspect", "{seg}", "--out", "{tmp}/x.mp4", "--scale", "0.001"],
  ["flow-train", "{seg}", "--out", "{tmp}/f", "--scale", "0.001", "--steps", "1"],
  ["cache", "{seg}", "--out", "{tmp}/c", "--scale", "0.001"],
  ["inspect", "{seg}", "--out", "{tmp}/x.mp4", "--scale", "nan"],
], ids=["label", "lanes", "inspect", "flow-train", "cache", "inspect-nan"])
def test_a_scale_that_leaves_no_pixel_is_refused(segment, weights, tmp_path, capsys, argv):
  rc = main([a.format(seg=segment, w=weights, tmp=tmp_path) for a in argv] + ["--quiet"])
  one_line_error(capsys, rc, "scale")


@pytest.mark.parametrize("argv", [
  ["label", "{seg}", "--teachers", "dinov2", "--weights", "{w}", "--out", "{f}"],
  ["cache", "{seg}", "--out", "{f}"],
  ["lanes", "{seg}", "--tracker", "lk", "--init", "gt", "--out", "{f}"],
  ["replay", "{seg}", "--out", "{f}", "--no-video"],
  ["train", "{recipe}", "--out", "{f}", "--steps", "1"],
], ids=["label", "cache", "lanes", "replay", "train"])
def test_an_out_that_is_a_file_is_one_line(segment, weights, tmp_path, capsys, argv):
  f = tmp_path / "a-file"
  f.write_text("keep")
  (tmp_path / "r.toml").write_text(GOOD)
  rc = main([a.format(seg=segment, w=weights, f=f, recipe=tmp_path / "r.toml") for a in argv] + ["--quiet"])
  one_line_error(capsys, rc, str(f))
  assert f.read_text() == "keep"


@pytest.mark.parametrize("key", ["file", "teacher", "frame_ids", "camera", "sha256"])
def test_a_manifest_entry_missing_a_key_is_one_line_and_blocks_writes(tmp_path, capsys, key):
  store = LabelStore(tmp_path / "store")
  cam = MEDMODEL.scaled(0.25)
  info = ShardInfo("mean", "x:Y", "0" * 64, "w", None, "v", "s", "/s", False)
  labels = Labels({"features": np.zeros((5, 3, 2, 2), np.float16), "cls": np.zeros((5, 3), np.float16)},
                  {"layer": 0}, cam)
  store.write(info, np.arange(5), labels)
  doc = json.loads((store.root / "manifest.json").read_text())
  del doc["shards"][0][key]
  (store.root / "manifest.json").write_text(json.dumps(doc))
  before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
  for call in (store.entries, lambda: store.write(info, np.arange(5, 10), labels)):
    with pytest.raises(ValueError, match=f"manifest.json: shard entry 0 lacks '{key}'"):
      call()
  assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("other, field, needle", [
  ('[student]\nconfig = "small"\n', 'student.config "nano" -> "small"', "a checkpoint of another model"),
  ("", "optim.ema_decay 0.0 -> 0.9", "the training state does not fit"),
], ids=["model", "ema"])
def test_a_resume_with_another_recipe_is_one_line_and_keeps_the_run(tmp_path, capsys, other, field, needle):
  assert _train(GOOD, tmp_path, "--steps", "2") == 0
  run = tmp_path / "run"
  before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
  recipe = other + GOOD if other else GOOD.replace("warmup_steps = 1", "warmup_steps = 1\nema_decay = 0.9")
  capsys.readouterr()
  one_line_error(capsys, _train(recipe, tmp_path, "--steps", "3", "--resume"), field, "--new-recipe")
  # told to go on under the new recipe: what cannot carry over is still refused
  one_line_error(capsys, _train(recipe, tmp_path, "--steps", "3", "--resume", "--new-recipe"), needle, "--restart")
  assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [
  ["label", "{seg}", "--teachers", "dinov2", "--weights", "{w}", "--out", "{tmp}/s"],
  ["lanes", "{seg}", "--tracker", "lk", "--init", "gt", "--out", "{tmp}/s"],
  ["flow-train", "{seg}", "--out", "{tmp}/f", "--steps", "1"],
  ["train", "{recipe}", "--out", "{tmp}/run", "--steps", "1"],
], ids=["label", "lanes", "flow-train", "train"])
def test_device_cuda_without_cuda_is_one_line(segment, weights, tmp_path, capsys, argv):
  (tmp_path / "r.toml").write_text(GOOD)
  rc = main([a.format(seg=segment, w=weights, tmp=tmp_path, recipe=tmp_path / "r.toml") for a in argv] +
            ["--device", "cuda", "--quiet"])
  one_line_error(capsys, rc, "--device cuda: no CUDA device")
  assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "s").exists()
