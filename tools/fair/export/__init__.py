"""`fair export`: a training run's checkpoint to the daemon's formats (ONNX FP32/FP16/INT8, tinygrad, TensorRT)."""
