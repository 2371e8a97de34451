"""The replay regression gate: reference outputs of a model on a segment, and a field-by-field comparison.

Like openpilot's model_replay: a replay's FairModelOutput messages are flattened into named fields
(`0003.depth`, `0003.objects.box`, `0003.lanes.y`, ...) and compared with process_replay's rule,
a field agrees where a == b or |a - b| <= max(tol, tol * max(|a|, |b|)) (both finite). Timing fields
(modelExecutionTime, frameAge, frameDropPerc) and the model's hash are not compared: the gate asks
whether the outputs moved, not whether the same bytes ran. Depth gets the tolerance of one step of
the message's inverse-depth code (FIELD_TOL). References are compressed npz files
under data/replay_refs/, one per bundled sample; `python -m tools.fair.replay_ref --update`
rewrites them after an intended model change.
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from openpilot_logging.logreader import LogReader

from cereal_ext.fair import FairOutput, from_events
from tools.fair.files import atomic_write

REFS_DIR = Path(__file__).resolve().parents[2] / "data" / "replay_refs"
REF_FRAMES = 10      # frames per bundled sample kept as reference (the first ones)
DEFAULT_TOL = 1e-3
# the message carries depth as a UInt16 inverse-depth code: one code step is depth / 32767 relative (0.9 % at the
# student's 300 m ceiling), so a last-bit float difference between CPUs may move it by a step; that is not a change
FIELD_TOL = {"depth": 1e-2}
_META = "meta"


@dataclass(frozen=True)
class FieldDiff:
  """One field that differs: where, how many of its values, and the worst pair."""
  field: str
  bad: int           # values outside tolerance (or 1 for a missing field / shape / text change)
  total: int
  ref: str           # the worst reference value (or what the reference has)
  new: str

  def __str__(self) -> str:
    return f"{self.field}: {self.bad}/{self.total} values differ (ref {self.ref}, new {self.new})"


def flatten(outputs: list[FairOutput]) -> dict[str, np.ndarray]:
  """Named arrays of every compared field of each output, keyed `frame.field` (frame index 0000..)."""
  fields: dict[str, np.ndarray] = {}
  for i, o in enumerate(outputs):
    p = f"{i:04d}."
    fields[p + "frame_id"] = np.array([o.frame_id, o.frame_id_extra, o.timestamp_eof], np.int64)
    fields[p + "invalid_reason"] = np.array(o.invalid_reason)
    fields[p + "model_id"] = np.array(o.model_id)
    if o.depth is not None:
      fields[p + "depth"] = np.asarray(o.depth, np.float32)
    if o.segmentation is not None:
      fields[p + "segmentation"] = np.asarray(o.segmentation, np.uint8)
    if o.objects is not None:
      objs = o.objects
      fields[p + "objects.class_id"] = np.array([b.class_id for b in objs], np.int64)
      fields[p + "objects.track_id"] = np.array([b.track_id for b in objs], np.int64)
      fields[p + "objects.score"] = np.array([b.score for b in objs], np.float32)
      for name, n in (("box", 4), ("position", 3), ("velocity", 3)):
        fields[p + f"objects.{name}"] = np.array([getattr(b, name) for b in objs], np.float32).reshape(len(objs), n)
    if o.lanes is not None:
      fields[p + "lanes.x"] = np.asarray(o.lanes.x, np.float32)
      fields[p + "lanes.prob"] = np.array([ln.prob for ln in o.lanes.lines], np.float32)
      for name in ("y", "z", "y_std", "z_std"):
        fields[p + f"lanes.{name}"] = np.array([getattr(ln, name) for ln in o.lanes.lines], np.float32)
    if o.ego_motion is not None:
      for name in ("trans", "rot", "trans_std", "rot_std"):
        fields[p + f"ego.{name}"] = np.asarray(getattr(o.ego_motion, name), np.float32)
  return fields


def outside_tolerance(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
  """Elementwise process_replay rule: True where a and b differ beyond max(tol, tol * max(|a|, |b|))."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  with np.errstate(invalid="ignore"):
    close = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= np.maximum(tol, tol * np.maximum(np.abs(a), np.abs(b))))
  return ~(same | close)


def compare(ref: dict[str, np.ndarray], new: dict[str, np.ndarray], tol: float = DEFAULT_TOL) -> list[FieldDiff]:
  """Every field that differs, in frame then field order (a field missing on either side differs)."""
  diffs = []
  for key in sorted(set(ref) | set(new)):
    if key not in new or key not in ref:
      diffs.append(FieldDiff(key, 1, 1, "present" if key in ref else "absent", "present" if key in new else "absent"))
    elif ref[key].dtype.kind == "U" or new[key].dtype.kind == "U":
      if str(ref[key]) != str(new[key]):
        diffs.append(FieldDiff(key, 1, 1, repr(str(ref[key])), repr(str(new[key]))))
    elif ref[key].shape != new[key].shape:
      diffs.append(FieldDiff(key, 1, 1, f"shape {ref[key].shape}", f"shape {new[key].shape}"))
    elif (bad := outside_tolerance(ref[key], new[key], max(tol, FIELD_TOL.get(key[5:], 0.0)))).any():
      a, b = ref[key].astype(np.float64), new[key].astype(np.float64)
      gap = np.where(bad, np.nan_to_num(np.abs(a - b), nan=np.inf, posinf=np.inf), -1.0)
      j = np.unravel_index(int(np.argmax(gap)), gap.shape)
      diffs.append(FieldDiff(key, int(bad.sum()), bad.size, f"{a[j]:.6g}", f"{b[j]:.6g}"))
  return diffs


def rlog_outputs(rlog: str | Path) -> list[FairOutput]:
  """The FairModelOutput messages of an rlog, in log order."""
  return [o for _, o in from_events(LogReader(str(rlog)))]


def save_ref(path: str | Path, fields: dict[str, np.ndarray], meta: dict) -> None:
  """Write a reference (compressed npz with a JSON meta entry) atomically."""
  buf = io.BytesIO()
  np.savez_compressed(buf, **fields, **{_META: np.array(json.dumps(meta, sort_keys=True))})
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  atomic_write(path, buf.getvalue())


def load_ref(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
  """A reference's fields and meta (frames, tol, segment, model_id); pickles are refused."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"reference {path} does not exist: write it with --update-ref")
  try:
    with np.load(path, allow_pickle=False) as z:
      fields = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"reference {path} is not a replay reference npz: {e}") from None
  if _META not in fields:
    raise ValueError(f"reference {path} has no '{_META}' entry: not a replay reference")
  return fields, json.loads(str(fields.pop(_META)))


def ref_path(segment: str | Path) -> Path:
  """Where the repository keeps the reference of a bundled sample."""
  return REFS_DIR / f"{Path(segment).name}.npz"


def gate(segment, ref: str | Path, runner, *, update: bool = False, max_frames: int | None = None,
         tol: float | None = None, out_dir: str | Path | None = None) -> list[FieldDiff]:
  """Replay `segment` with `runner` and compare its outputs with the reference `ref` (or, with
  update, write them as the new reference). Returns the fields that differ (empty: the gate passes)."""
  from tools.fair.replay import replay_segment
  if not update:
    ref_fields, meta = load_ref(ref)
    max_frames = meta["frames"] if max_frames is None else max_frames
    tol = meta["tol"] if tol is None else tol
  with tempfile.TemporaryDirectory(prefix="fair-replay-") as tmp:
    out = Path(out_dir) if out_dir is not None else Path(tmp)
    replay_segment(segment, out, runner, max_frames=max_frames or REF_FRAMES, video=False, progress=False)
    outputs = rlog_outputs(out / "rlog.zst")
  if not outputs:
    raise ValueError(f"{segment}: the replay produced no outputs to compare")
  fields = flatten(outputs)
  if update:
    save_ref(ref, fields, {"segment": Path(segment).name, "model_id": runner.model_id, "frames": len(outputs),
                           "tol": DEFAULT_TOL if tol is None else tol})
    return []
  if len(outputs) < max_frames:
    raise ValueError(f"{segment}: the replay gave {len(outputs)} outputs, the reference has {max_frames}")
  return compare({k: v for k, v in ref_fields.items() if int(k[:4]) < max_frames}, fields, tol)


def report(diffs: list[FieldDiff], ref: str | Path, shown: int = 5) -> str:
  """One line per differing field (the first `shown`), for the command's exit message."""
  if not diffs:
    return f"replay matches {ref}"
  lines = [f"replay differs from {ref} in {len(diffs)} fields; first:"] + [f"  {d}" for d in diffs[:shown]]
  return "\n".join(lines)


def update_samples(runtime: str = "onnxruntime") -> list[Path]:
  """Rewrite the reference of every bundled sample with the bundled student."""
  from selfdrive.modeld_fair.runner import make_runner
  from tools.fair.samples import sample_paths
  written = []
  for seg in sample_paths():
    gate(seg, ref_path(seg), make_runner(runtime), update=True)
    written.append(ref_path(seg))
  return written


if __name__ == "__main__":
  ap = argparse.ArgumentParser(description="rewrite data/replay_refs/ from the bundled student on the bundled samples")
  ap.add_argument("--update", action="store_true", help="replay every bundled sample and write its reference")
  if ap.parse_args().update:
    for p in update_samples():
      print(p, f"{p.stat().st_size / 1e3:.0f} kB")
