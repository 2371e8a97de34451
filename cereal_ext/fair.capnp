# fairpilot's own message schema. It travels as the bytes of openpilot's
# Event.customReservedRawData0/1/2 (:Data), so openpilot's schema is never edited.
#
# Evolution rules (old logs must stay readable, old readers must read new logs):
#   - append only: a new field takes the next unused ordinal (@N); never renumber, retype,
#     reuse or delete a field or an enumerant (retire one by renaming it `deprecatedX`);
#   - a change of meaning or encoding is a new field, never a new meaning for an old one;
#   - bump `schemaVersion` (and SCHEMA_VERSION in cereal_ext/fair.py) with every change.
# Frames: model frame = openpilot's medmodel image (512x256, f=910, principal point
# (256, 47.6)), pixels; road frame = x forward, y right, z down (metres), origin on the
# road below the camera; device frame as openpilot's cameraOdometry.
@0xe59ede5d87f22511;

struct FairModelOutput {
  schemaVersion @0 :UInt16;        # 0 = not a FairModelOutput (unset)

  # modeld-style metadata
  frameId @1 :UInt32;              # camera frame id (VisionIPC)
  frameIdExtra @2 :UInt32;         # frame id of the second (wide) camera, if used
  frameAge @3 :UInt32;             # frames this input lags the newest camera frame id (as modeld)
  frameDropPerc @4 :Float32;       # filtered frame drop rate, percent [0, 100]
  timestampEof @5 :UInt64;         # camera end-of-frame time, ns (monotonic)
  modelExecutionTime @6 :Float32;  # seconds, around the model run
  valid @7 :Bool;                  # true iff invalidReason == none
  invalidReason @8 :InvalidReason;
  invalidDetail @9 :Text;          # free text for humans, e.g. "stride 1920 != 2048"
  modelId @10 :Text;               # e.g. "fair-student-s-v3"
  modelHash @11 :Data;             # sha256 (32 bytes) of the compiled artifact, or empty

  # outputs; a pointer left unset means "not produced this frame"
  depth @12 :DepthGrid;
  segmentation @13 :ClassGrid;
  objects @14 :List(Object);       # unset: not produced; empty: nothing detected
  lanes @15 :Lanes;
  egoMotion @16 :EgoMotion;

  enum InvalidReason {
    none @0;
    noCalibration @1;              # no liveCalibration yet
    badFrame @2;                   # unexpected frame size / stride / layout
    nonFiniteOutput @3;            # NaN or inf in the model outputs
    staleFrame @4;                 # frame too old to be worth running
    transportDisconnected @5;      # frame source lost
    modelError @6;                 # the runner raised
    artifactMismatch @7;           # compiled artifact hash differs from the expected one
    unknown @8;                    # never written: a reader decodes enumerants newer than itself as this
  }

  # Depth along the optical axis (view z, metres) quantised as inverse depth, one cell per
  # (512/width)x(256/height) model-frame pixels, row-major from the top left.
  # q = clip(round(invDepthScale / depth), 1, 65535); depth = invDepthScale / q;
  # q = 0: no depth (sky). Depths below invDepthScale/65535 saturate there. Relative error
  # <= depth / (2 * invDepthScale - depth): 0.31 % at 200 m with the default 32767.5.
  struct DepthGrid {
    width @0 :UInt16;
    height @1 :UInt16;
    invDepthScale @2 :Float32;     # metres; = (smallest depth) * 65535
    values @3 :Data;               # width*height little-endian UInt16
  }

  # Semantic class per cell (selfdrive/modeld_fair/classes.py, 0..7), row-major from the
  # top left, 4 bits per cell: cell 2k in the low nibble of byte k, 2k+1 in the high one
  # (0 when width*height is odd); nibble 15 = ignore (class id 255); 8..14 are invalid.
  struct ClassGrid {
    width @0 :UInt16;
    height @1 :UInt16;
    cells @2 :Data;                # ceil(width*height / 2) bytes
  }

  struct Object {
    classId @0 :UInt8;             # semantic class id (vehicle 4, pedestrian 5, ...)
    score @1 :Float32;             # [0, 1]
    trackId @2 :UInt32;            # 0 = untracked
    # 2D box, model-frame pixels, x0 <= x1, y0 <= y1
    boxX0 @3 :Float32;
    boxY0 @4 :Float32;
    boxX1 @5 :Float32;
    boxY1 @6 :Float32;
    # ground point below the 3D box centre, road frame (m)
    posX @7 :Float32;
    posY @8 :Float32;
    posZ @9 :Float32;
    # velocity relative to the ego, road frame (m/s)
    velX @10 :Float32;
    velY @11 :Float32;
    velZ @12 :Float32;
  }

  # Lane lines sampled at fixed forward distances x (default: openpilot's 33 X_IDXS,
  # 192 * (i/32)^2 m), each with y, z (road frame, m) and their stds at every x.
  struct Lanes {
    x @0 :List(Float32);           # increasing, metres
    lines @1 :List(LaneLine);      # left to right
  }

  struct LaneLine {
    prob @0 :Float32;              # [0, 1]
    y @1 :List(Float32);
    z @2 :List(Float32);
    yStd @3 :List(Float32);
    zStd @4 :List(Float32);
  }

  # As openpilot's cameraOdometry: device frame, velocity (m/s) and angular velocity (rad/s).
  struct EgoMotion {
    trans @0 :List(Float32);       # 3
    rot @1 :List(Float32);         # 3
    transStd @2 :List(Float32);    # 3
    rotStd @3 :List(Float32);      # 3
  }
}
