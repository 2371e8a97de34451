"""Quality metrics shared by every fairpilot report; pure numpy (+ scipy), one module per task family."""
from tools.fair.bench.metrics.depth import DepthMetrics, depth_metrics
from tools.fair.bench.metrics.detection import (DetectionAP, LeadDistanceError, box_iou, detection_ap,
                                               lead_distance_error)
from tools.fair.bench.metrics.egomotion import PoseErrors, ate_rmse, relative_pose_errors, rotation_angle_deg
from tools.fair.bench.metrics.flow import FlowMetrics, flow_metrics
from tools.fair.bench.metrics.lanes import LaneCounts, lane_counts, lane_point_accuracy, lateral_error
from tools.fair.bench.metrics.mot import MOTMetrics, mot_metrics
from tools.fair.bench.metrics.segmentation import SegmentationMetrics, confusion_matrix, segmentation_metrics
from tools.fair.bench.metrics.tracking import JFMetrics, TapVidMetrics, boundary_f, j_and_f, region_iou, tapvid_metrics

__all__ = [
  "DepthMetrics", "depth_metrics",
  "DetectionAP", "LeadDistanceError", "box_iou", "detection_ap", "lead_distance_error",
  "PoseErrors", "ate_rmse", "relative_pose_errors", "rotation_angle_deg",
  "FlowMetrics", "flow_metrics",
  "LaneCounts", "lane_counts", "lane_point_accuracy", "lateral_error",
  "MOTMetrics", "mot_metrics",
  "SegmentationMetrics", "confusion_matrix", "segmentation_metrics",
  "JFMetrics", "TapVidMetrics", "boundary_f", "j_and_f", "region_iou", "tapvid_metrics",
]
