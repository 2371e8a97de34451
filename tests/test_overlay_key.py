"""Overlay keys: MODEL / GROUND TRUTH headers, the class legend and the depth colour bar."""
import numpy as np

from selfdrive.modeld_fair.classes import CLASS_COLORS, SEMANTIC_CLASSES
from tools.fair.overlay import DEPTH_TICKS_M, KEY_H, class_legend, colorize_depth, depth_colorbar, header_strip, \
  with_key


def test_with_key_frames_the_mosaic():
  img = np.full((256, 1024, 3), 7, np.uint8)
  out = with_key(img, ["MODEL", "GROUND TRUTH"])
  assert out.shape == (256 + 3 * KEY_H, 1024, 3) and out.shape[0] % 2 == 0
  assert np.array_equal(out[KEY_H:KEY_H + 256], img)
  head = header_strip(["MODEL", "GROUND TRUTH"], 1024)
  assert (head[:, :512] > 200).any() and (head[:, 512:] > 200).any()  # a title over each column


def test_legend_shows_every_class_colour_in_order():
  leg = class_legend(1024)
  w = 1024 // len(SEMANTIC_CLASSES)
  for i, color in enumerate(CLASS_COLORS[:len(SEMANTIC_CLASSES)]):
    assert np.array_equal(leg[13, i * w + 9], color)


def test_colour_bar_is_colorize_depths_log_scale():
  bar = depth_colorbar(1024)
  x0, x1 = 40, 1024 - 24
  row = bar[8, x0:x1]
  assert np.array_equal(row[0], colorize_depth(np.array([[2.0]]))[0, 0])
  assert np.array_equal(row[-1], colorize_depth(np.array([[100.0]]))[0, 0])
  mid = int(round((np.log(10) - np.log(2)) / (np.log(100) - np.log(2)) * (x1 - x0 - 1)))
  assert np.abs(row[mid].astype(int) - colorize_depth(np.array([[10.0]]))[0, 0]).max() <= 8
  assert DEPTH_TICKS_M[0] == 2 and DEPTH_TICKS_M[-1] == 100
