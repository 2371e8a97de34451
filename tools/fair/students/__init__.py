"""Students: small EfficientViT-style networks distilled from the FAIR teachers, exported to the daemon's
ONNX contract (selfdrive/modeld_fair/model_io.py). See docs/student.md."""
from tools.fair.students.efficientvit import CONFIGS, Student, StudentConfig, build_student, fold_bn, student_config
from tools.fair.students.stats import ModelStats, model_stats

__all__ = ["CONFIGS", "ModelStats", "Student", "StudentConfig", "build_student", "fold_bn", "model_stats",
           "student_config"]
