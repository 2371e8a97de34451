"""The student's input and output tensors: the contract between training/export and the daemon.

Every student exported to ONNX has exactly these named tensors (batch 1, static shapes), with
activations applied inside the model so the daemon's decoding is cheap numpy. Grids are in the
medmodel frame (512x256 px): a cell of a G_h x G_w grid covers 512/G_w x 256/G_h pixels.
"""
from __future__ import annotations

import numpy as np

from selfdrive.modeld_fair.classes import CLASS_ID, SEMANTIC_CLASSES

# two consecutive calibrated frames, previous then current, each openpilot's 6x128x256 YUV packing
INPUT_NAME = "img"
INPUT_SHAPE = (1, 12, 128, 256)   # uint8
INPUT_DTYPE = "uint8"

N_LANES = 4            # left road edge side to right: left-left, left, right, right-right lane lines
N_LANE_POINTS = 33
# forward distances (m) of lane points, openpilot's modelV2 spacing (dense near, sparse far);
# used by ground truth, the student's lane head and the message alike
LANE_X = (192.0 * (np.arange(N_LANE_POINTS) / (N_LANE_POINTS - 1)) ** 2).astype(np.float32)
OBJECT_CLASSES = ("vehicle", "pedestrian")          # detection classes, in heatmap channel order
OBJECT_SEMANTIC_IDS = tuple(CLASS_ID[c] for c in OBJECT_CLASSES)
OBJECT_STRIDE = 8      # model-frame pixels per detection cell

OUTPUTS = {
  # name: (shape, meaning)
  "depth": ((1, 1, 32, 64), "metres along the model frame's optical axis, > 0"),
  "seg_logits": ((1, len(SEMANTIC_CLASSES), 64, 128), "class scores (argmax = class id)"),
  "obj_heatmap": ((1, len(OBJECT_CLASSES), 32, 64), "object-centre probability per class, in [0, 1]"),
  "obj_box": ((1, 4, 32, 64), "distances (model px, >= 0) from the cell centre to the box's left, top, right, bottom"),
  "obj_depth": ((1, 1, 32, 64), "object centre distance along the optical axis (m), > 0"),
  "lanes": ((1, N_LANES, N_LANE_POINTS, 4), "road frame y, z (m) and log std of y, z at LANE_X"),
  "lane_prob": ((1, N_LANES), "probability that each lane line exists, in [0, 1]"),
  "ego": ((1, 12), "device-frame trans (m/s), rot (rad/s), then log std of each (cameraOdometry-like)"),
}
OUTPUT_NAMES = tuple(OUTPUTS)
