"""The GPU check's modules (bench/gpu_check.py is the script): preflight, training parts,
evaluation parts, projections."""
