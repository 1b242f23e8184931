"""rgap_bench: a benchmark suite for gradient-inversion attacks on federated learning, built around R-GAP."""

__version__ = "0.1.0"
