"""`fair compare`: openpilot's own logged outputs beside the student's, scored in the same tables.

What a segment's rlog holds is scored as it is logged: openpilot's `modelV2` (the four lane lines and
the first lead, prob > 0.5), `radarState.leadOne` (status set) and our `FairModelOutput` (written by
`fair replay`, whose rlog keeps the input events). On a simulated segment (scene.json) each source is
scored against ground truth with tools.fair.val.Scores: lane F1 and lateral error at 10 / 20 / 40 m,
lead detection rate and distance error. On any segment the student is also scored against modelV2
as the reference (agreement, not accuracy). The ground-truth lead distance is to the lead's centre,
as the student's objects are; openpilot measures to its rear, half a car length nearer.
"""
from __future__ import annotations

import argparse
import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cereal_ext.fair import from_event
from selfdrive.modeld_fair.model_io import LANE_X, N_LANES
from selfdrive.modeld_fair.sources import OUTPUT_SERVICE
from tools.fair.files import atomic_write
from tools.fair.val import Scores, lead_of, tables

SOURCES = ("openpilot modelV2", "openpilot radarState", "fairpilot student")


@dataclass(frozen=True)
class Observation:
  """One source's lanes and lead for one camera frame (None: the source does not give it)."""
  lanes_y: np.ndarray | None = None     # (4, 33) lateral offsets at LANE_X (m)
  lane_prob: np.ndarray | None = None   # (4,)
  lead: tuple[float, float] | None = None  # forward distance, lateral offset (m); None: no lead seen
  has_lead_output: bool = True


def _model_v2(m) -> Observation:
  lanes = np.zeros((N_LANES, len(LANE_X)), np.float64)
  for k, ll in enumerate(list(m.laneLines)[:N_LANES]):
    x, y = np.asarray(ll.x, np.float64), np.asarray(ll.y, np.float64)
    lanes[k] = np.interp(LANE_X, x, y) if len(x) >= 2 else np.nan
  probs = np.zeros(N_LANES)
  probs[:len(m.laneLineProbs)] = list(m.laneLineProbs)[:N_LANES]
  lead = next(((float(ld.x[0]), float(ld.y[0])) for ld in list(m.leadsV3)[:1] if ld.prob > 0.5 and len(ld.x)), None)
  return Observation(lanes, probs, lead)


def _student(ev) -> Observation | None:
  out = from_event(ev)
  if not out.valid:
    return None
  pos = np.array([o.position for o in out.objects], np.float64).reshape(-1, 3)
  lead = lead_of(pos[:, 0], pos[:, 1], np.array([o.class_id for o in out.objects], np.int64))
  lead_lat = None if lead is None else float(pos[pos[:, 0] == lead, 1][0])
  return Observation(np.stack([ln.y for ln in out.lanes.lines]).astype(np.float64),
                     np.array([ln.prob for ln in out.lanes.lines]), None if lead is None else (lead, lead_lat))


def logged(segment) -> dict[str, dict[int, Observation]]:
  """Per source, camera frame id -> what it logged for that frame (radarState: the frame in force at its time)."""
  from tools.fair.routes import Segment
  seg = Segment(segment)
  cams = sorted((ev.logMonoTime, ev.roadCameraState.frameId) for ev in seg.of_type("roadCameraState"))
  times = [t for t, _ in cams]
  obs: dict[str, dict[int, Observation]] = {s: {} for s in SOURCES}
  for ev in seg.of_type("modelV2"):
    obs[SOURCES[0]][ev.modelV2.frameId] = _model_v2(ev.modelV2)
  for ev in seg.of_type("radarState"):
    i = bisect.bisect_right(times, ev.logMonoTime) - 1
    if i >= 0:
      lo = ev.radarState.leadOne
      obs[SOURCES[1]][cams[i][1]] = Observation(lead=(float(lo.dRel), float(lo.yRel)) if lo.status else None)
  for ev in seg.of_type(OUTPUT_SERVICE):
    if (o := _student(ev)) is not None:
      obs[SOURCES[2]][from_event(ev).frame_id] = o
  return {s: v for s, v in obs.items() if v}


def _score(scores: Scores, o: Observation, lanes: np.ndarray, valid: np.ndarray, exists: np.ndarray,
           lead: float | None, lane_tol_m: float) -> None:
  scores.n += 1
  if o.lanes_y is not None:
    pred = np.stack([o.lanes_y, np.zeros_like(o.lanes_y)], -1)
    scores.lane_frame(pred, o.lane_prob, lanes, valid, exists, lane_tol_m)
  scores.lead(lead, None if o.lead is None else o.lead[0])


def compare(segment, lane_tol_m: float = 0.5) -> dict[str, dict]:
  """{"<source> vs ground truth": metrics, ..., "fairpilot student vs openpilot modelV2": metrics} (module doc)."""
  obs = logged(segment)
  if not obs:
    raise ValueError(f"{segment}: no modelV2, radarState or FairModelOutput events to compare")
  results: dict[str, dict] = {}
  if (Path(segment) / "scene.json").is_file():
    from selfdrive.modeld_fair.camera import MEDMODEL
    from selfdrive.modeld_fair.model_io import OBJECT_SEMANTIC_IDS
    from tools.fair.data.cache import frame_ground_truth
    from tools.fair.data.targets import lane_targets
    from tools.fair.sim.gt import load_segment_scene
    scene, gts = load_segment_scene(segment), {}
    for f in sorted({f for o in obs.values() for f in o}):
      if 0 <= f < scene.n_frames:
        g = frame_ground_truth(scene, f, MEDMODEL, 1.0, instance=False)
        n = int(g["box_count"])
        pos = g["box_pos"][:n].astype(np.float64)
        ids = np.asarray(OBJECT_SEMANTIC_IDS)[g["box_cls"][:n].astype(np.int64)]
        gts[f] = (lane_targets(g["lanes"], g["lane_visible"], g["lane_exists"]), lead_of(pos[:, 0], pos[:, 1], ids))
    for source, frames in obs.items():
      s = Scores()
      for f, o in sorted(frames.items()):
        if f in gts:
          t, lead = gts[f]
          _score(s, o, t["lanes"], t["lane_valid"], t["lane_exists"], lead, lane_tol_m)
      results[f"{source} vs ground truth"] = s.result()
  ref, student = obs.get(SOURCES[0]), obs.get(SOURCES[2])
  if ref and student:
    s = Scores()
    for f, o in sorted(student.items()):
      if (r := ref.get(f)) is not None:
        exists = (r.lane_prob > 0.5).astype(np.float32)
        lanes = np.stack([r.lanes_y, np.zeros_like(r.lanes_y)], -1)
        valid = np.isfinite(r.lanes_y) & (exists[:, None] > 0)
        _score(s, o, np.nan_to_num(lanes), valid.astype(np.float32), exists, None if r.lead is None else r.lead[0],
               lane_tol_m)
    results[f"{SOURCES[2]} vs {SOURCES[0]}"] = s.result()
  if not results:
    raise ValueError(f"{segment}: nothing to score against: no scene.json (ground truth) and no modelV2 beside the "
                     "student's outputs")
  return results


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segment", type=Path, help="segment folder whose rlog has modelV2 / radarState and/or "
                                            "FairModelOutput (e.g. a `fair replay --out` folder)")
  p.add_argument("--out", type=Path, default=None, help="also write compare.md and compare.json here")


def run(args: argparse.Namespace) -> int:
  results = compare(args.segment)
  text = f"# fair compare: `{args.segment.name}`\n\n" + "\n".join(f"## {k}\n\n{tables(r)}" for k, r in results.items())
  if args.out is not None:
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "compare.md", text)
    atomic_write(args.out / "compare.json", json.dumps(results, indent=2, default=float) + "\n")
  print(text)
  return 0
