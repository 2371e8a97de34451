"""Lane pseudo-labels: lane points set on a frame, tracked through the video, lifted to the road (docs/lanes.md).

  label_lanes(frames, init, tracker, height, config, source) -> LaneLabels (per frame: lanes (4, 33, 2) y, z at
  model_io.LANE_X, visible (4, 33), exists (4,)); init sources gt_init / modelv2_init / seg_init; `fair lanes`.
"""
from tools.fair.lanes.pipeline import (INIT_SOURCES, LaneConfig, LaneErrors, LaneInit, LaneLabels, ModelFrame,
                                       gt_init, label_lanes, lane_errors, load_labels, model_frames, model_to_road,
                                       modelv2_init, road_to_model, save_labels, seg_init)

__all__ = ["INIT_SOURCES", "LaneConfig", "LaneErrors", "LaneInit", "LaneLabels", "ModelFrame", "gt_init",
           "label_lanes", "lane_errors", "load_labels", "model_frames", "model_to_road", "modelv2_init",
           "road_to_model", "save_labels", "seg_init"]
