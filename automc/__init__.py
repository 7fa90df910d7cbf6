"""AutoMC: automated model compression driven by a knowledge graph of strategies."""

__version__ = "0.1.0"
