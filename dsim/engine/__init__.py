"""Execution engines: local (vectorized) and Ray (actors)."""
