"""Road geometry: the one definition of the centreline, the elevation and the paint.

World frame: x along the road's general direction, y right, z down (metres). The road is
parametrised by s = world x (small-angle approximation: headings stay below ~0.3 rad):
  centreline  y_c(s): piecewise cubic, curvature y_c'' linear between knots every `curv_ds` m
  elevation   z_r(s): piecewise quadratic, grade linear between knots every `grade_ds` m (z down)
  the surface is z = z_r(x) everywhere (flat cross-section: lanes, verge and sidewalk alike)
  lateral offset of a world point: d = y - y_c(x); lane line j sits at d = offsets[j]
Rendering, lane ground truth and trajectories all evaluate these same functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tools.fair.sim.textures import noise_tile, value_noise, wrap

DASH, PERIOD = 3.0, 12.0    # dashed lines: 3 m of paint every 12 m
WEAR_CELL = (0.5, 0.05)     # worn-paint noise lattice: along the line, across it (m)
LINE_KINDS = ("none", "solid", "dashed")


@dataclass(frozen=True)
class LineSpec:
  """One painted lane line: kind, width (m), colour name, paint strength 0..1, dash phase (m)."""
  kind: str
  width: float
  color: str
  strength: float
  phase: float


@dataclass(frozen=True, eq=False)
class RoadSpec:
  """Everything that defines the road surface and its paint (stored in the scene file)."""
  x0: float                 # world x of the first knot
  curv_ds: float            # spacing of the curvature knots (m)
  curvature: np.ndarray     # y_c'' at the knots (1/m), linear in between
  grade_ds: float           # spacing of the grade knots (m)
  grade: np.ndarray         # rise/run at the knots (up positive), linear in between
  lanes: int
  lane_width: float
  shoulder: float           # asphalt beyond the outer lines (m)
  curb: float               # road_edge strip (kerb) width (m)
  sidewalk: float           # sidewalk width beyond the kerb (m); 0 = grass verge
  lines: tuple[LineSpec, ...]  # lanes + 1 lines, left to right
  wear: float               # fraction of paint worn away
  texture_seed: int

  @cached_property
  def geometry(self) -> Road:
    return Road(self)


class Road:
  """Evaluation of a RoadSpec: float64 functions of world coordinates, plus per-frame local
  float32 tables for the renderer (same polynomials, re-centred on the ego)."""

  def __init__(self, spec: RoadSpec):
    self.spec = spec
    k = np.asarray(spec.curvature, np.float64)
    ds = spec.curv_ds
    # slope and offset at every knot by exact integration of the linear curvature
    h = np.concatenate([[0.0], np.cumsum((k[:-1] + k[1:]) * ds / 2)])
    dy = h[:-1] * ds + k[:-1] * ds ** 2 / 2 + (k[1:] - k[:-1]) * ds ** 2 / 6
    y = np.concatenate([[0.0], np.cumsum(dy)])
    # per piece: y = c0 + c1 u + c2 u^2 + c3 u^3, u = x - knot
    self.centre_coef = np.stack([y[:-1], h[:-1], k[:-1] / 2, (k[1:] - k[:-1]) / (6 * ds)], axis=1)
    g = np.asarray(spec.grade, np.float64)
    gds = spec.grade_ds
    e = np.concatenate([[0.0], np.cumsum((g[:-1] + g[1:]) * gds / 2)])
    # z (down) per piece: z = q0 + q1 u + q2 u^2
    self.elev_coef = np.stack([-e[:-1], -g[:-1], -(g[1:] - g[:-1]) / (2 * gds)], axis=1)
    n, w = spec.lanes, spec.lane_width
    self.offsets = -n * w / 2 + w * np.arange(n + 1)
    self.half_width = n * w / 2 + spec.shoulder       # asphalt edge
    self.kerb_out = self.half_width + spec.curb          # outer edge of the kerb strip
    self.kinds = np.array([LINE_KINDS.index(ln.kind) for ln in spec.lines], np.int8)
    self.widths = np.array([ln.width for ln in spec.lines])
    self.phases = np.array([ln.phase for ln in spec.lines])
    self.tile = noise_tile(spec.texture_seed)

  # --- float64 point evaluation (ground truth, trajectories, props) ---
  def _piece(self, x, x0, ds, n):
    k = np.clip(np.floor((np.asarray(x, np.float64) - x0) / ds), 0, n - 1).astype(np.int64)
    return k, np.asarray(x, np.float64) - (x0 + k * ds)

  def centre(self, x, deriv: int = 0) -> np.ndarray:
    """y_c(x) or its first/second derivative with respect to x."""
    k, u = self._piece(x, self.spec.x0, self.spec.curv_ds, len(self.centre_coef))
    c0, c1, c2, c3 = self.centre_coef[k].T
    if deriv == 0:
      return c0 + u * (c1 + u * (c2 + u * c3))
    if deriv == 1:
      return c1 + u * (2 * c2 + 3 * u * c3)
    return 2 * c2 + 6 * u * c3

  def elevation(self, x, deriv: int = 0) -> np.ndarray:
    """z_r(x) (z down) or its first/second derivative with respect to x."""
    k, u = self._piece(x, self.spec.x0, self.spec.grade_ds, len(self.elev_coef))
    q0, q1, q2 = self.elev_coef[k].T
    if deriv == 0:
      return q0 + u * (q1 + u * q2)
    if deriv == 1:
      return q1 + 2 * u * q2
    return 2 * q2

  def lane_centre(self, lane: float) -> float:
    """Lateral offset of the centre of lane `lane` (0 = leftmost; fractional = in between)."""
    return float(self.offsets[0] + (lane + 0.5) * self.spec.lane_width)

  def paint(self, x, d, x_shift: float = 0.0):
    """Painted-line test at road coordinates (x, d): (painted bool, nearest line index).

    x may be relative to `x_shift` (the renderer passes ego-relative float32 coordinates).
    """
    f32 = np.float32
    x, d = np.atleast_1d(x), np.atleast_1d(d)
    w = self.spec.lane_width
    j = np.clip(np.rint((d - f32(self.offsets[0])) * f32(1 / w)), 0, len(self.offsets) - 1).astype(np.intp)
    dist = np.abs(d - (f32(self.offsets[0]) + j.astype(f32) * f32(w)))
    on = dist < f32(self.widths.max() / 2)
    idx = np.flatnonzero(on)  # the few candidates near a line get the full test
    jj = j.ravel()[idx]
    kind = self.kinds[jj]
    ok = (dist.ravel()[idx] < self.widths.astype(f32)[jj] * f32(0.5)) & (kind > 0)
    xi = x.ravel()[idx]
    ph = (xi + f32(np.mod(x_shift, PERIOD)) + self.phases.astype(f32)[jj]) * f32(1 / PERIOD)
    ok &= (kind == 1) | ((ph - np.floor(ph)) < f32(DASH / PERIOD))
    if self.spec.wear > 0:
      xw = xi + f32(wrap(x_shift, WEAR_CELL[0]))
      n = value_noise(self.tile, xw * f32(WEAR_CELL[1] / WEAR_CELL[0]), d.ravel()[idx], WEAR_CELL[1],
                      shift=11)
      ok &= n >= f32(self.spec.wear)
    on.ravel()[idx] = ok
    return on, j

  # --- renderer tables (ego-relative, float32) ---
  def local_centre(self, x_e: float, y_e: float, lo: float, hi: float):
    """Centreline pieces covering local x in [lo, hi] around the ego at (x_e, y_e):
    (x of the first piece start, spacing, float32 coefficients (K, 4) of y_c - y_e in u)."""
    ds, n = self.spec.curv_ds, len(self.centre_coef)
    k0 = int(np.clip(np.floor((x_e + lo - self.spec.x0) / ds), 0, n - 1))
    k1 = int(np.clip(np.floor((x_e + hi - self.spec.x0) / ds), 0, n - 1))
    coef = self.centre_coef[k0:k1 + 1].copy()
    coef[:, 0] -= y_e
    return self.spec.x0 + k0 * ds - x_e, ds, coef.astype(np.float32)

  def local_elevation(self, x_e: float, z_e: float, hi: float):
    """Elevation pieces from the ego's piece to local x = hi: list of (lo, hi, a, q0, q1, q2)
    (float64): for local x in [lo, hi), z - z_e = q0 + q1 (x - a) + q2 (x - a)^2. The first piece
    starts at -inf and the last ends at +inf (the road extends beyond its knots)."""
    gds, n = self.spec.grade_ds, len(self.elev_coef)
    k0 = int(np.clip(np.floor((x_e - self.spec.x0) / gds), 0, n - 1))
    out = []
    for k in range(k0, n):
      a = self.spec.x0 + k * gds - x_e
      if a > hi:
        break
      q0, q1, q2 = self.elev_coef[k]
      b = a + gds if k < n - 1 else np.inf
      out.append((a if k > k0 else -np.inf, b, a, q0 - z_e, q1, q2))
    return out
