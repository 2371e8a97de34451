"""Procedural textures: value noise from a precomputed random tile, evaluated at surface coordinates.

Callers pass coordinates fixed to the surface (world coordinates for static geometry, body
coordinates for actors), so texture sticks to surfaces and optical flow ground truth holds for
the pixels too. Coordinates arrive relative to the ego; `wrap` folds the ego's large world
position into the tile period first so float32 keeps millimetre precision.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

TILE = 256  # lattice cells per tile side (power of two: indices wrap with a bit mask)


@lru_cache(maxsize=8)
def noise_tile(seed: int) -> np.ndarray:
  """(TILE+1)^2 float32 lattice of uniform values in [0, 1) drawn from `seed`, flattened; the
  extra row and column repeat the first ones so bilinear lookups need no wrap-around."""
  t = np.random.default_rng([seed, 0x7E57]).random((TILE, TILE), dtype=np.float32)
  return np.pad(t, ((0, 1), (0, 1)), mode="wrap").ravel()


def wrap(offset: float, cell: float) -> float:
  """The world offset folded into one tile period of a noise with lattice spacing `cell`."""
  return float(np.mod(offset, TILE * cell))


def value_noise(tile: np.ndarray, x: np.ndarray, y: np.ndarray, cell: float, shift: int = 0,
                size: int = TILE) -> np.ndarray:
  """Bilinearly interpolated lattice noise at (x, y) with lattice spacing `cell` metres from a
  padded (size+1)^2 tile (values in [0, 1) for noise_tile).

  `shift` offsets the lattice so different layers of the same tile are uncorrelated.
  """
  gx = x * np.float32(1.0 / cell)
  gy = y * np.float32(1.0 / cell)
  fx = np.floor(gx)
  fy = np.floor(gy)
  gx -= fx
  gy -= fy
  idx = ((fy.astype(np.int32) + 3 * shift) & (size - 1)) * (size + 1)
  idx += (fx.astype(np.int32) + shift) & (size - 1)
  top = np.take(tile, idx)
  top += (np.take(tile, idx + 1) - top) * gx
  idx += size + 1
  bot = np.take(tile, idx)
  bot += (np.take(tile, idx + 1) - bot) * gx
  top += (bot - top) * gy
  return top


# ground texture: one multi-octave tile (fine grain to 1.6 m patches) with a mip chain, so
# each ground pixel costs a single bilinear lookup at the level that matches its footprint
MIP_TEXEL, MIP_N, MIP_LEVELS = 0.05, 1024, 8   # level k: texel 0.05 * 2^k m, period 51.2 m


def _upsample(g: np.ndarray, w: int) -> np.ndarray:
  """Periodic bilinear upsampling of a square grid by an integer factor."""
  m = g.shape[0]
  c = np.arange(m * w) / w
  i0 = np.floor(c).astype(int)
  f = c - i0
  i1 = (i0 + 1) % m
  g = g[i0] * (1 - f)[:, None] + g[i1] * f[:, None]
  return g[:, i0] * (1 - f) + g[:, i1] * f


@lru_cache(maxsize=4)
def ground_mips(seed: int) -> tuple[np.ndarray, ...]:
  """Zero-mean ground noise (within +-0.5) and its box-filtered mip levels, padded and flattened."""
  rng = np.random.default_rng([seed, 0x6A0])
  tex = sum(amp * _upsample(rng.random((MIP_N // w, MIP_N // w)) - 0.5, w) for w, amp in ((1, 0.8), (8, 0.35), (32, 1.0)))
  tex *= 0.5 / np.abs(tex).max()
  levels = [tex]
  while len(levels) < MIP_LEVELS:
    t = levels[-1]
    levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
  return tuple(np.pad(t, ((0, 1), (0, 1)), mode="wrap").astype(np.float32).ravel() for t in levels)


def mip_noise(mips, x, y, x_shift: float, row_footprint: np.ndarray) -> np.ndarray:
  """Ground noise at ego-relative x (world x = x + x_shift) and lateral y, filtered per image row
  for that row's smallest pixel footprint (0 where even the coarsest level would alias)."""
  level = np.ceil(np.log2(np.maximum(row_footprint, 1e-9) / MIP_TEXEL)).clip(0, MIP_LEVELS).astype(int)
  out = np.zeros(x.shape, np.float32)
  starts = np.concatenate([[0], np.flatnonzero(np.diff(level)) + 1, [len(level)]])
  for a, b in zip(starts[:-1], starts[1:]):
    k = int(level[a])
    if k == MIP_LEVELS:
      continue
    cell = MIP_TEXEL * 2 ** k
    # lattice point j of level k sits at the centre of the level-0 texels it averages
    off = np.float32((1 - 2.0 ** -k) / 2 * cell)
    xs = x[a:b] + np.float32(np.mod(x_shift, MIP_TEXEL * MIP_N) - off)
    out[a:b] = value_noise(mips[k], xs, y[a:b] - off, cell, size=MIP_N >> k)
  return out


def lod(cell: float, footprint: np.ndarray | float) -> np.ndarray | float:
  """Weight of a pattern with period `cell` seen at a pixel footprint (metres): 1 while a period
  spans several pixels, fading to 0 before it would alias."""
  return np.clip(np.float32(cell * 0.5) / np.maximum(footprint, np.float32(1e-6)) - np.float32(0.5), 0.0, 1.0)


# --- materials: albedo (and light emission) of surfaces from their texture coordinates ---
_F32 = np.float32
ASPHALT, KERB, PAVING, GRASS = (0.26, 0.26, 0.27), (0.58, 0.57, 0.55), (0.5, 0.48, 0.45), (0.2, 0.32, 0.1)
GLASS = (0.07, 0.09, 0.12)
PAINT = {"white": (0.92, 0.92, 0.88), "yellow": (0.95, 0.75, 0.15)}


def _rgb(base, shade):
  """Three planes: base colour (3 floats) times a shading array."""
  return [shade * _F32(c) for c in base]


def _lerp(a, b, m):
  """Per-channel select: b where mask m, else a (lists of planes or colour triples)."""
  return [np.where(m, _F32(y) if np.isscalar(y) else y, _F32(x) if np.isscalar(x) else x) for x, y in zip(a, b)]


# per ground region (asphalt, kerb, paving, grass): base colour and how strongly the ground
# noise modulates it
_GROUND_BASE = np.array([ASPHALT, KERB, PAVING, GRASS], _F32).T.copy()
_GROUND_VAR = np.array([0.5, 0.4, 0.4, 1.0], _F32)


def ground_albedo(road, x, d, x_shift: float, region, paint, line, row_footprint, base=None, contrast: float = 1.0):
  """Albedo planes of the ground at ego-relative x and lateral offset d.

  region: 0 asphalt, 1 kerb, 2 paving (sidewalk), 3 grass; paint/line from Road.paint;
  row_footprint: the smallest ground footprint (m) of a pixel in each row (texture filtering);
  base: the four regions' colours (default ASPHALT, KERB, PAVING, GRASS), contrast: ground texture gain.
  """
  spec = road.spec
  base = _GROUND_BASE if base is None else np.array(base, _F32).T.copy()
  noise = mip_noise(ground_mips(spec.texture_seed), x, d, x_shift, row_footprint)
  tex = (_GROUND_VAR * _F32(contrast))[region] * noise
  tex += _F32(1)
  # darker, polished wheel tracks 0.85 m either side of every lane centre
  dl = np.abs(d - _F32(road.offsets[0]))
  dl -= np.floor(dl * _F32(1 / spec.lane_width)) * _F32(spec.lane_width)
  dl = np.abs(np.abs(dl - _F32(spec.lane_width / 2)) - _F32(0.85))
  tex *= _F32(1) - _F32(0.07) * np.clip(_F32(1) - dl * _F32(3.3), 0, 1) * (region == 0)
  if spec.sidewalk > 0:  # paving stones 0.6 m square with dark joints, faded where they would alias
    jx = (x + _F32(np.mod(x_shift, 0.6))) * _F32(1 / 0.6)
    jd = d * _F32(1 / 0.6)
    joint = (np.minimum(jx - np.floor(jx), jd - np.floor(jd)) < _F32(0.05)) & (region == 2)
    tex *= _F32(1) - _F32(0.3) * joint * lod(0.6, row_footprint[:, None])
  out = [tex * np.take(base[c], region) for c in range(3)]
  idx = np.flatnonzero(paint)
  if len(idx):
    j = line.ravel()[idx]
    strength = np.array([ln.strength for ln in spec.lines], _F32)[j]
    shade = _F32(1) + _F32(0.3) * noise.ravel()[idx]
    for c in range(3):
      col = np.array([PAINT[ln.color][c] for ln in spec.lines], _F32)[j] * shade
      flat = out[c].reshape(-1)
      flat[idx] += (col - flat[idx]) * strength
  return out


def material_albedo(material: str, p, face, half, color, color2, tile, night: bool):
  """Albedo planes and emission planes (or None) of a primitive's hit points.

  p: local hit coordinates (3 arrays); face: box face code axis*2 + (normal sign > 0), 6 for
  a cylinder's side, 7 for a sphere; half: the primitive's half extents.
  """
  x, y, z = p
  hx, hy, hz = (float(v) for v in half)
  grain = None if material == "building" else _F32(0.92) + _F32(0.16) * value_noise(tile, x + y, z, 0.2, shift=17)
  emit = None
  if material in ("body", "cargo", "cabin"):
    out = _rgb(color, grain * _F32(0.97))
    if material == "cabin":  # glass within a frame on the vertical faces
      side = (face == 2) | (face == 3)
      fr = (face == 0) | (face == 1)
      inner = (z > _F32(-hz + 0.05)) & (z < _F32(hz - 0.02)) & \
              ((side & (np.abs(x) < _F32(hx - 0.12))) | (fr & (np.abs(y) < _F32(hy - 0.07))))
      sky = _F32(0.06) + _F32(0.1) * np.clip(-z / _F32(hz + 1e-3), 0, 1)  # sky reflection brighter at the top
      out = _lerp(out, [sky + _F32(c) * _F32(0.4) for c in color2], inner)
      return out, None
    wheel_x = hx - 0.95 * (1 if material == "body" else 2.0) if hx > 1.2 else 0.0
    low = z > _F32(hz - (0.9 if material == "cargo" else 0.22))   # bumper / chassis band
    out = _lerp(out, (0.1, 0.1, 0.11), low)
    if material == "cargo":  # panel ribs on the sides
      rib = ((x * _F32(1 / 0.6)) % _F32(1)) < _F32(0.06)
      out = _lerp(out, [c * _F32(0.8) for c in out], rib & ((face == 2) | (face == 3)))
    # wheels on the sides
    zc = _F32(hz - 0.33)
    for xc in (-wheel_x, wheel_x):
      r2 = (x - _F32(xc)) ** 2 + (z - zc) ** 2
      out = _lerp(out, (0.04, 0.04, 0.045), (r2 < _F32(0.33 ** 2)) & ((face == 2) | (face == 3)))
      out = _lerp(out, (0.35, 0.35, 0.37), (r2 < _F32(0.16 ** 2)) & ((face == 2) | (face == 3)))
    # tail lights and licence plate at the rear, headlights at the front (top of the body box)
    band = (z > _F32(-hz + 0.08)) & (z < _F32(-hz + 0.26)) if material == "body" else (z > _F32(hz - 1.3)) & (z < _F32(hz - 1.1))
    corner = (np.abs(y) > _F32(hy - 0.4)) & (np.abs(y) < _F32(hy - 0.06)) & band
    rear, front = corner & (face == 0), corner & (face == 1)
    plate = (face == 0) & (np.abs(y) < _F32(0.26)) & (z > _F32(hz - 0.55)) & (z < _F32(hz - 0.42))
    out = _lerp(out, (0.55, 0.05, 0.04), rear)
    out = _lerp(out, (0.85, 0.85, 0.8), front | plate)
    if night:
      emit = [_F32(1.6) * rear, _F32(0.12) * rear, _F32(0.1) * rear]
      emit = [e + _F32(c) * front for e, c in zip(emit, (3.0, 2.9, 2.6))]
    return out, emit
  if material == "clothes":
    return _lerp(_rgb(color, grain), _rgb(color2, grain), z > 0), None
  if material == "skin":
    return _rgb(color, grain), None
  if material == "metal":
    return _rgb(color, grain * (_F32(0.9) + _F32(0.2) * value_noise(tile, z, x + y, 0.5, shift=23))), None
  if material == "lamp":
    lit = face == 5
    out = _lerp(_rgb((0.3, 0.3, 0.32), grain), (0.9, 0.85, 0.7), lit)
    return out, ([_F32(c) * lit for c in (2.5, 2.2, 1.6)] if night else None)
  if material == "sign":
    front = face == 0
    border = (np.abs(y) > _F32(hy - 0.05)) | (np.abs(z) > _F32(hz - 0.05))
    out = _lerp(_rgb((0.45, 0.45, 0.47), grain), _rgb(color, grain), front)
    return _lerp(out, (0.9, 0.9, 0.9), front & border), None
  if material == "bark":
    return _rgb(color, grain * (_F32(0.7) + _F32(0.5) * value_noise(tile, x * _F32(4), z, 0.3, shift=29))), None
  if material == "leaves":
    n = value_noise(tile, x + z * _F32(0.7), y - z * _F32(0.5), 0.35, shift=31)
    return _rgb(color, grain * (_F32(0.6) + _F32(0.8) * n)), None
  if material == "building":
    fx, fz = (x + y) * _F32(1 / 2.6), z * _F32(1 / 3.2)  # window grid on the facades
    cell = (fx - np.floor(fx) > _F32(0.25)) & (fz - np.floor(fz) > _F32(0.3)) & (face < 4) & (z < _F32(hz - 1.0))
    out = _lerp(_rgb(color, _F32(1) - _F32(0.08) * (fz - np.floor(fz))), GLASS, cell)
    if night:
      lit = cell & (value_noise(tile, np.floor(fx), np.floor(fz), 1.0, shift=41) > _F32(0.6))
      emit = [_F32(c) * lit for c in (0.9, 0.75, 0.45)]
    return out, emit
  raise ValueError(f"unknown material {material!r}")
