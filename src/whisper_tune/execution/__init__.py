"""Execution: where training runs: the CPU reference backend, a planned launch and its workers."""
