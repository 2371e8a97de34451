"""The scenario suite end to end on one tiny segment: generated once (cached), scored, written."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("scenarios_bench", ROOT / "bench/scenarios_bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_suite_miniature(tmp_path):
  out, cache = tmp_path / "scenarios.md", tmp_path / "cache"
  argv = ["--seconds", "0.3", "--stride", "3", "--scenarios", "occlusion", "--cameras", "mici",
          "--cache", str(cache), "--out", str(out)]
  assert bench.main(argv) == 0
  text = out.read_text()
  row = next(ln for ln in text.splitlines() if ln.startswith("| occlusion | mici |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert int(cells[2]) == 2                      # frames 0 and 3 of 6 (0.3 s at 20 fps)
  assert 0 < float(cells[3]) < 1                 # depth AbsRel of a real prediction
  assert 0 <= float(cells[-2]) < 1               # constant-velocity speed error over 1 frame (50 ms)
  raw = json.loads((cache / "scenarios.json").read_text())
  seg = cache / "fairsim-mici-occlusion-s9009--0"
  assert seg.name in raw["segments"] and raw["model_id"] in text
  mtime = (seg / "scene.json").stat().st_mtime_ns
  assert bench.main(argv) == 0                   # the cached segment is reused, not regenerated
  assert (seg / "scene.json").stat().st_mtime_ns == mtime
  assert out.read_text().split("- command")[1] == text.split("- command")[1]
