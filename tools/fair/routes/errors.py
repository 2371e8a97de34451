"""Errors and warnings of the route reader/writer."""
from __future__ import annotations


class RouteError(Exception):
  """Base class: a route or segment folder could not be read or written."""


class SegmentError(RouteError):
  """A segment folder is unusable: missing folder, log or video, or unreadable content."""


class UnknownCameraError(SegmentError, ValueError):
  """A video's resolution matches no known device road camera."""


class NoCalibrationError(SegmentError, ValueError):
  """A segment logs no liveCalibration: its frames cannot be warped to the model frame without guessing."""


class SegmentWarning(RuntimeWarning):
  """Recoverable damage: a truncated/corrupt log or video, or frames that could not be matched."""
