"""Layers as linear operators: the constraint systems R-GAP and the rank analysis solve."""
