"""The teacher -> student experiments on generated data (issue 5 §4): generate.py (simulated segments),
teacher_training.py (FAIR-architecture teachers trained on simulator ground truth), evaluate.py (held-out
metrics of teachers and students, and the comparison table)."""
