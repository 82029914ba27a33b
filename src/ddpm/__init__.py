"""A small, correct DDPM library: schedules, samplers, the U-Net and its training loop."""

__version__ = "0.1.0"
