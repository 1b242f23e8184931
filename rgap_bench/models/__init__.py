"""Models attacked by the suite: plain `nn.Module`s made of conv/linear blocks."""

from rgap_bench.models.convnet import build_convnet
from rgap_bench.models.layers import Block, LayerSpec, SequentialNet, build_from_specs
from rgap_bench.models.paper import cnn6, cnn6d, fcn3

__all__ = [
    "Block",
    "LayerSpec",
    "SequentialNet",
    "build_convnet",
    "build_from_specs",
    "cnn6",
    "cnn6d",
    "fcn3",
]
