"""Read and write openpilot segment folders (rlog + camera videos).

  Segment(path)                    read: events, calibration, frames as padded NV12
  SegmentWriter(path, camera, ...) write: fcamera.hevc, qcamera.ts, rlog.zst from RGB frames
"""
from tools.fair.routes.errors import NoCalibrationError, RouteError, SegmentError, SegmentWarning, UnknownCameraError
from tools.fair.routes.reader import (RLOG_NAMES, STREAMS, CameraStream, Frame, Segment, copy_to_nv12, decode_nv12,
                                      parse_events, read_events, video_size)
from tools.fair.routes.writer import QCAMERA_SIZE, SegmentWriter

__all__ = ["NoCalibrationError", "RouteError", "SegmentError", "SegmentWarning", "UnknownCameraError", "RLOG_NAMES", "STREAMS",
           "CameraStream", "Frame", "Segment", "copy_to_nv12", "decode_nv12", "parse_events", "read_events",
           "video_size", "QCAMERA_SIZE", "SegmentWriter"]
