"""Defect inspection inference service. Never imports torch."""
