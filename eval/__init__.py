"""Evaluation: identity and ground-truth metrics, benchmark runner, paired statistics."""
