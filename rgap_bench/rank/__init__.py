"""Rank analysis: how much of a layer's input the shared gradient determines, before any attack is run."""

from rgap_bench.rank.analysis import LayerRank, RankReport, analyse_model
from rgap_bench.rank.counts import LayerCounts, conv_counts, linear_counts

__all__ = ["LayerCounts", "LayerRank", "RankReport", "analyse_model", "conv_counts", "linear_counts"]
