"""visionbench's harness: sweeps, timing, FLOPs, memory, environment, reports (``python -m bench``)."""

__version__ = "0.1.0"
