"""Runs: the run as its user sees it: its directory, phases, metrics, report and trackers."""
