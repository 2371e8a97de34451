"""Procedural driving scenes with exact ground truth (docs/scene_format.md).

make_scene(seed, seconds, camera, scenario) -> Scene (save/load as scene.json);
render_frame(scene, frame, camera, rpy) -> Render; render_gt(segment_dir, frame_id, frame, size).
"""
from tools.fair.sim.gt import GroundTruth, render_gt, scene_gt
from tools.fair.sim.render import Render, render_frame
from tools.fair.sim.scenarios import SCENARIOS, Knobs
from tools.fair.sim.scene import Scene
from tools.fair.sim.world import make_scene

__all__ = ["SCENARIOS", "GroundTruth", "Knobs", "Render", "Scene", "make_scene", "render_frame", "render_gt", "scene_gt"]
