"""fairpilot's messages: the FairModelOutput schema (fair.capnp) and its Python helpers."""
from cereal_ext.fair import (DEFAULT_SLOT, DEPTH_MIN_M, DEPTH_SHAPE, INVALID_REASONS, LANE_X, SCHEMA_PATH,
                             SCHEMA_VERSION, SEG_SHAPE, SLOTS, EgoMotion, FairMessageError, FairObject, FairOutput,
                             LaneLine, Lanes, build_message, decode, dequantize_depth, encode, fair_capnp, field_sizes,
                             from_event, from_events, quantize_depth, to_event)

__all__ = ["DEFAULT_SLOT", "DEPTH_MIN_M", "DEPTH_SHAPE", "INVALID_REASONS", "LANE_X", "SCHEMA_PATH", "SCHEMA_VERSION",
           "SEG_SHAPE", "SLOTS", "EgoMotion", "FairMessageError", "FairObject", "FairOutput", "LaneLine", "Lanes",
           "build_message", "decode", "dequantize_depth", "encode", "fair_capnp", "field_sizes", "from_event",
           "from_events", "quantize_depth", "to_event"]
