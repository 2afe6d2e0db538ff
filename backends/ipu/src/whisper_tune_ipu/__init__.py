"""whisper-tune's Graphcore IPU backend: the ``ipu`` entry point, its options and the pipeline planner.

Importing it imports no torch: the planner is pure Python (``whisper_tune_ipu.planner``).
"""

__version__ = "0.1.0"
