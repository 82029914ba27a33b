"""Orchestration: one thin entry point per DVC stage (paths and I/O, no maths)."""
