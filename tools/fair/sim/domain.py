"""Domain randomisation: the look and the camera of a generated segment drawn at random.

A student trained on one look (one asphalt, one sun, one mounting, one lens, clean pixels) fails on real
roads. With `Knobs.randomise` make_scene draws, from its own stream rng([seed, STREAM]) (so the road, the
traffic and the props of a seed stay those of the plain scene):
  textures   ground colours (asphalt, kerb, paving, grass) and the contrast of the ground texture (Look);
  lighting   sun and sky light intensity and colour, fog, exposure and vignetting;
  camera     mounting height, roll/pitch/yaw and focal length;
  sensor     read noise, optical blur and JPEG compression (the segment's video is HEVC on top).
Every drawn value lands in the scene file (rendering never draws), and each one only changes pixels or
the camera: ground truth is rendered through the same camera, so it stays exact (tests/test_sim_domain.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tools.fair.sim.textures import ASPHALT, GRASS, KERB, PAVING

STREAM = 0xD0A1
HEIGHT = (1.0, 1.6)            # m: a windscreen mount in hatchbacks to vans
CALIB_DEG = (2.0, 6.0, 4.0)    # max |roll|, |pitch|, |yaw| of the mounting (degrees)
FOCAL = (0.8, 1.25)            # times the device camera's focal length
NOISE, BLUR = (0.0, 8.0), (0.0, 1.6)
JPEG = (25, 95)                # quality range; JPEG_P of the segments get no JPEG pass
JPEG_P = 0.7


@dataclass(frozen=True)
class Look:
  """Ground materials: base albedo per region (asphalt, kerb, paving, grass) and texture contrast gain."""
  asphalt: tuple[float, float, float] = ASPHALT
  kerb: tuple[float, float, float] = KERB
  paving: tuple[float, float, float] = PAVING
  grass: tuple[float, float, float] = GRASS
  texture: float = 1.0

  def to_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

  @classmethod
  def from_dict(cls, d: dict) -> Look:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _r(a, decimals: int = 3):
  """Rounded as the scene file stores it (the stored value is the truth)."""
  return tuple(round(float(v), decimals) for v in a) if np.ndim(a) else round(float(a), decimals)


def _tint(rng, base, spread: float, gain: tuple[float, float]):
  return _r(np.clip(np.asarray(base) * rng.uniform(*gain) * (1 + rng.uniform(-spread, spread, 3)), 0.02, 0.95))


def mounting(rng) -> tuple[tuple[float, float, float], float]:
  """(device_from_calib rpy in rad, camera height in m) of a random mounting."""
  return _r(np.deg2rad(CALIB_DEG) * rng.uniform(-1, 1, 3), 6), _r(rng.uniform(*HEIGHT))


def focal(rng, device_focal: float) -> float:
  """A random focal length (px) of the device camera's image size."""
  return _r(device_focal * rng.uniform(*FOCAL), 2)


def look(rng) -> Look:
  """Random ground colours: dark to light grey asphalt, dry to green grass, and texture contrast."""
  return Look(_tint(rng, ASPHALT, 0.05, (0.55, 1.6)), _tint(rng, KERB, 0.05, (0.7, 1.3)),
              _tint(rng, PAVING, 0.1, (0.7, 1.3)), _tint(rng, GRASS, 0.35, (0.6, 1.6)), _r(rng.uniform(0.4, 1.8)))


def lighting(rng, lt):
  """The scenario's Lighting with random light intensity and colour and fog density."""
  warm = rng.uniform(-0.12, 0.12)   # colour temperature: > 0 warmer (more red, less blue)
  colour = np.array([1 + warm, 1.0, 1 - warm])
  return replace(lt, sun=_r(np.asarray(lt.sun) * rng.uniform(0.6, 1.4) * colour),
                 ambient=_r(np.asarray(lt.ambient) * rng.uniform(0.6, 1.5) * colour),
                 zenith=_r(np.clip(np.asarray(lt.zenith) * rng.uniform(0.7, 1.3, 3), 0, 1)),
                 horizon=_r(np.clip(np.asarray(lt.horizon) * rng.uniform(0.8, 1.2, 3), 0, 1)),
                 fog=_r(lt.fog * np.exp(rng.uniform(np.log(0.3), np.log(6.0))), 7))


def sensor(rng, s):
  """The scenario's Sensor with random noise, blur, exposure, vignetting and JPEG quality."""
  return replace(s, noise=_r(max(s.noise, rng.uniform(*NOISE)), 2), blur=_r(max(s.blur, rng.uniform(*BLUR)), 2),
                 exposure=_r(rng.uniform(0.75, 1.3)), vignette=_r(rng.uniform(0.0, 0.45)),
                 jpeg=int(rng.integers(JPEG[0], JPEG[1] + 1)) if rng.random() < JPEG_P else 0)
