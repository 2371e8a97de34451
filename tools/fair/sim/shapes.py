"""Props and actors as ray-castable primitives: boxes, vertical cylinders and spheres.

Every primitive has a local frame (world_from_local rotation + centre). Boxes span +-half along
the local axes, cylinders have their axis along local z (radius half[0], half length half[2]),
spheres radius half[0]. Texture coordinates are the local coordinates of the hit point, so
textures stick to props and ride along with actors (the flow ground truth holds for the pixels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfdrive.modeld_fair.camera import rot_from_euler
from selfdrive.modeld_fair.classes import CLASS_ID, IGNORE_ID
from tools.fair.sim.scene import Actor, Prop, Scene

BOX, CYLINDER, SPHERE = 0, 1, 2


@dataclass(frozen=True, eq=False)
class Prim:
  """One primitive in the world. `material` selects the albedo function in textures.py."""
  shape: int
  rot: np.ndarray         # world_from_local (3, 3)
  centre: np.ndarray      # world (3,)
  half: np.ndarray        # (3,) half extents (see module docstring)
  material: str
  cls: int                # semantic class (IGNORE_ID for trees and buildings: no such class)
  inst: int               # actor id, 0 for static props
  color: tuple[float, float, float]
  color2: tuple[float, float, float]
  ground: float           # world z of the ground below the object (shadows fall there)

  @property
  def corners(self) -> np.ndarray:
    """The 8 corners of the local bounding box, in world coordinates."""
    s = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64)
    return self.centre + (s * self.half) @ self.rot.T


def _box(rot, base, lo, hi, material, cls, inst, color, color2=(0.0, 0.0, 0.0)) -> Prim:
  """A box spanning local lo..hi (3-vectors) in the frame (rot, base)."""
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  return Prim(BOX, rot, base + rot @ ((lo + hi) / 2), (hi - lo) / 2, material, cls, inst, color, color2, base[2])


def _cyl(rot, base, centre, radius, half_len, material, cls, inst, color, color2=(0.0, 0.0, 0.0)) -> Prim:
  return Prim(CYLINDER, rot, base + rot @ np.asarray(centre, np.float64), np.array([radius, radius, half_len]),
              material, cls, inst, color, color2, base[2])


def _sphere(rot, base, centre, radius, material, cls, inst, color) -> Prim:
  return Prim(SPHERE, rot, base + rot @ np.asarray(centre, np.float64), np.full(3, radius), material, cls, inst,
              color, (0.0, 0.0, 0.0), base[2])


def prop_prims(p: Prop) -> list[Prim]:
  """The primitives of a static prop (standing on the ground at its position, rotated by yaw)."""
  rot = rot_from_euler((0.0, 0.0, p.yaw))
  base = np.array([p.x, p.y, p.z])
  pole = CLASS_ID["pole_sign"]
  if p.kind in ("pole", "lamp"):
    r, h = p.size
    out = [_cyl(rot, base, (0, 0, -h / 2), r, h / 2, "metal", pole, 0, p.color)]
    if p.kind == "lamp":  # arm reaching over the road (local +y) with a lamp head
      out.append(_box(rot, base, (-0.06, 0, -h), (0.06, 2.2, -h + 0.12), "metal", pole, 0, p.color))
      out.append(_box(rot, base, (-0.25, 1.7, -h + 0.02), (0.25, 2.4, -h + 0.2), "lamp", pole, 0, p.color))
    return out
  if p.kind == "sign":
    r, h, w, ph = p.size
    return [_cyl(rot, base, (0, 0, -h / 2), r, h / 2, "metal", pole, 0, (0.5, 0.5, 0.5)),
            _box(rot, base, (-0.1, -w / 2, -h - ph), (-0.06, w / 2, -h), "sign", pole, 0, p.color)]
  if p.kind == "tree":
    r, h, crown = p.size
    return [_cyl(rot, base, (0, 0, -h / 2 - 0.3), r, h / 2 + 0.3, "bark", IGNORE_ID, 0, (0.3, 0.22, 0.15)),
            _sphere(rot, base, (0.0, 0.0, -h - 0.7 * crown), crown, "leaves", IGNORE_ID, 0, p.color)]
  if p.kind == "gantry":
    r, h, span, depth = p.size
    out = [_cyl(rot, base, (0, s * span / 2, -h / 2 - depth / 2), r, h / 2 + depth / 2, "metal", pole, 0,
                (0.55, 0.55, 0.57)) for s in (-1, 1)]
    out.append(_box(rot, base, (-0.2, -span / 2, -h - depth), (0.2, span / 2, -h), "metal", pole, 0, (0.55, 0.55, 0.57)))
    out.append(_box(rot, base, (-0.3, -3.6, -h - depth + 0.05), (-0.24, -0.4, -h + 1.2), "sign", pole, 0, p.color))
    return out
  if p.kind == "building":
    length, width, h = p.size
    return [_box(rot, base, (-length / 2, -width / 2, -h), (length / 2, width / 2, 0.0), "building", IGNORE_ID, 0,
                 p.color)]
  raise ValueError(f"unknown prop kind {p.kind!r}")


# vehicle layouts (fractions): body top as a fraction of the height; cabin x range from the rear
# and from the front (metres, scaled with the length); cabin inset from the sides (metres)
_LAYOUT = {"car": (0.55, 0.35, 1.3, 0.07), "suv": (0.55, 0.15, 1.1, 0.06), "van": (0.45, 0.05, 0.7, 0.04)}


def actor_prims(scene: Scene, actor: Actor, frame: int) -> list[Prim]:
  """The primitives of an actor at `frame` (its body frame: origin on the ground, z down)."""
  rot, base = scene.actor_pose(actor, frame)
  l, w, h = actor.size
  i = actor.id
  if actor.kind == "pedestrian":
    ped = CLASS_ID["pedestrian"]
    return [_cyl(rot, base, (0, 0, -(h - 0.21) / 2), 0.2, (h - 0.21) / 2, "clothes", ped, i, actor.color, actor.color2),
            _sphere(rot, base, (0.0, 0.0, -h + 0.11), 0.11, "skin", ped, i, (0.75, 0.55, 0.42))]
  veh = CLASS_ID["vehicle"]
  if actor.kind == "truck":  # cargo box behind a lower cab
    return [_box(rot, base, (-l / 2, -w / 2, -h), (l / 2 - 2.4, w / 2, 0.0), "cargo", veh, i, actor.color, actor.color2),
            _box(rot, base, (l / 2 - 2.3, -w / 2 + 0.05, -0.75 * h), (l / 2, w / 2 - 0.05, 0.0), "body", veh, i,
                 actor.color, actor.color2)]
  top, rear, front, inset = _LAYOUT[actor.kind]
  k = l / 4.5
  hb = top * h
  return [_box(rot, base, (-l / 2, -w / 2, -hb), (l / 2, w / 2, 0.0), "body", veh, i, actor.color, actor.color2),
          _box(rot, base, (-l / 2 + rear * k, -w / 2 + inset, -h), (l / 2 - front * k, w / 2 - inset, -hb), "cabin", veh,
               i, actor.color, actor.color2)]
