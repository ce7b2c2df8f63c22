"""moda-lab: a research workbench for depth-stream attention (Mixture-of-Depths Attention, arXiv 2603.15619)."""

__version__ = "0.1.0"
