"""Layers, one module per family; importing a module registers its types."""
from .base import LAYERS, Layer, LayerError, NetError, register  # noqa: F401
from . import data, neuron, common, vision, normalization, loss, transformer  # noqa: F401,E402
