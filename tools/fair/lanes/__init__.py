"""Lane pseudo-labels: lane points set on a frame, tracked through the video, lifted to the road (docs/lanes.md).

  label_lanes(frames, init, tracker, height, config, source) -> LaneLabels (per frame: lanes (4, 33, 2) y, z at
  model_io.LANE_X, visible (4, 33), exists (4,)); init sources gt_init / modelv2_init / seg_init; write_labels / read_labels: the
  label store's "lanes" teacher; `fair lanes`.
"""
from tools.fair.lanes.pipeline import (INIT_SOURCES, LaneConfig, LaneErrors, LaneInit, LaneLabels, ModelFrame,
                                       gt_init, label_lanes, lane_errors, model_frames, model_to_road, modelv2_init,
                                       read_labels, road_to_model, seg_init, write_labels)

__all__ = ["INIT_SOURCES", "LaneConfig", "LaneErrors", "LaneInit", "LaneLabels", "ModelFrame", "gt_init",
           "label_lanes", "lane_errors", "model_frames", "model_to_road", "modelv2_init", "read_labels",
           "road_to_model", "seg_init", "write_labels"]
