"""Named scenarios: each is a set of knobs that steers the scene generator (world.make_scene).

A knob is an input of generation; the scene file stores both the knobs and what was drawn from
them (the resolved road, props, lighting and trajectories), so rendering never re-draws anything.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Knobs:
  """Scenario knobs (ranges are drawn uniformly with the scene's rng)."""
  curvature: float = 1 / 400      # max |curvature| of curves (1/m); 0 = straight road
  grade: float = 0.03             # max |grade| (rise/run); 0 = flat road
  lanes: tuple[int, int] = (1, 4)              # lane count range (inclusive)
  lane_width: tuple[float, float] = (3.0, 3.8)  # metres
  speed: tuple[float, float] = (15.0, 30.0)    # ego desired speed range (m/s)
  traffic: float = 6.0            # vehicles per km per lane around the ego
  pedestrians: float = 0.0        # pedestrians walking on the sidewalks, per km and side
  crossings: float = 0.0          # pedestrians crossing the road ahead of the ego, per minute
  poles: float = 25.0             # street poles per km and side
  signs: float = 6.0              # signs per km and side
  trees: float = 30.0             # trees per km and side
  buildings: float = 0.0          # buildings per km and side
  overhead: float = 1.0           # overhead sign gantries per km
  sidewalk: bool = False          # raised-kerb sidewalks (city) instead of grass verges
  lighting: str = "day"           # "day" | "dusk" | "night"
  sun_ahead: bool = False         # put the low sun in front of the ego (glare)
  glare: float = 0.0              # strength of the sun bloom (0..1)
  shadows: float = 0.0            # extra roadside shadow casters (trees/gantries near the road) per km
  marking_wear: float = 0.0       # fraction of paint worn away (0..1)
  missing_lines: float = 0.0      # probability that an inner lane line is not painted at all
  noise: float = 2.0              # sensor read noise (std, 8-bit units)
  blur: float = 0.0               # optical blur (std, pixels at 1928 px width)
  event: str = "none"             # "none" | "cut_in" | "lead_brake" | "occlusion"
  calib: tuple[float, float, float] = (1.5, 3.0, 3.0)  # max |roll|, |pitch|, |yaw| of the mounting (degrees)
  randomise: bool = False         # domain randomisation of textures, lighting, camera and sensor (sim/domain.py)

  def __post_init__(self):
    if self.lighting not in LIGHTINGS:
      raise ValueError(f"unknown lighting {self.lighting!r} (valid: {', '.join(LIGHTINGS)})")
    if self.event not in EVENTS:
      raise ValueError(f"unknown event {self.event!r} (valid: {', '.join(EVENTS)})")
    if not 1 <= self.lanes[0] <= self.lanes[1] <= 4:
      raise ValueError(f"lanes must be a range within 1..4, got {self.lanes}")

  def to_dict(self) -> dict:
    return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

  @classmethod
  def from_dict(cls, d: dict) -> Knobs:
    names = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


LIGHTINGS = ("day", "dusk", "night")
EVENTS = ("none", "cut_in", "lead_brake", "occlusion")

_DEFAULT = Knobs()
SCENARIOS: dict[str, Knobs] = {
  "default": _DEFAULT,
  "highway": replace(_DEFAULT, curvature=1 / 900, grade=0.02, lanes=(3, 4), lane_width=(3.5, 3.8), speed=(27.0, 35.0),
                     traffic=8.0, poles=12.0, signs=3.0, trees=15.0, overhead=2.0),
  "city": replace(_DEFAULT, curvature=1 / 250, grade=0.02, lanes=(1, 2), lane_width=(3.0, 3.4), speed=(8.0, 14.0),
                  traffic=10.0, pedestrians=25.0, crossings=4.0, poles=35.0, signs=15.0, trees=15.0, buildings=40.0,
                  overhead=0.0, sidewalk=True),
  "curvy": replace(_DEFAULT, curvature=1 / 120, grade=0.05, lanes=(1, 2), speed=(12.0, 20.0), traffic=3.0),
  "night": replace(_DEFAULT, lighting="night", noise=5.0, blur=0.7),
  "dusk_glare": replace(_DEFAULT, lighting="dusk", sun_ahead=True, glare=0.8, noise=3.0),
  "cut_in": replace(_DEFAULT, lanes=(2, 4), traffic=3.0, event="cut_in"),
  "lead_brake": replace(_DEFAULT, traffic=3.0, event="lead_brake"),
  "occlusion": replace(_DEFAULT, curvature=1 / 900, lanes=(2, 4), traffic=2.0, event="occlusion"),
  "faded_markings": replace(_DEFAULT, marking_wear=0.5, missing_lines=0.4),
  "shadows": replace(_DEFAULT, shadows=40.0, trees=60.0),
  # geometry test bench: straight flat road, zero mounting angles, no sensor effects
  "straight_flat": replace(_DEFAULT, curvature=0.0, grade=0.0, noise=0.0, calib=(0.0, 0.0, 0.0)),
}


def scenario_knobs(scenario: str | Knobs) -> Knobs:
  """The knobs of a named scenario (or the knobs themselves); ValueError lists the valid names."""
  if isinstance(scenario, Knobs):
    return scenario
  if scenario not in SCENARIOS:
    raise ValueError(f"unknown scenario {scenario!r} (valid: {', '.join(SCENARIOS)})")
  return SCENARIOS[scenario]
