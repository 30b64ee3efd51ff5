"""Torch-free analysis of per-sample rows: statistics, floors, trajectories, studies, reports,
and the gate."""
