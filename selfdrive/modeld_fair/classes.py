"""The semantic class list shared by ground truth, teachers, the student and its messages."""
from __future__ import annotations

import numpy as np

# index -> name; 255 marks pixels without a label
SEMANTIC_CLASSES = (
  "road",          # 0 drivable asphalt
  "lane_marking",  # 1 painted lines on the road
  "road_edge",     # 2 curbs and road boundaries
  "terrain",       # 3 grass, sidewalk, verge
  "vehicle",       # 4 cars, trucks, buses
  "pedestrian",    # 5 people
  "pole_sign",     # 6 poles, signs, traffic lights
  "sky",           # 7
)
CLASS_ID = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
IGNORE_ID = 255

# RGB colours for overlays, one per class
CLASS_COLORS = np.array([
  (128, 64, 128), (255, 255, 255), (244, 35, 232), (107, 142, 35),
  (0, 0, 142), (220, 20, 60), (250, 170, 30), (70, 130, 180),
], dtype=np.uint8)
