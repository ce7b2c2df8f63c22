"""MUDDFormer's per-token multiway mix of a hidden-state history (arXiv 2502.12170, Section 2).

``naive_mudd_mix`` / ``naive_mudd_mix_bwd`` are the fp32 reference (vectorised einsums) for callers that own
their autograd (the model's depth stream, moda_lab/model/mudd.py). Layout: h [B, T, n, D], a prefix view of a
[B, T, S, D] history buffer (slot j = X_j, X_0 the embeddings); w [B, T, C, n], one weight per token, way and
slot; the mix is [B, T, C, D].
"""

from __future__ import annotations

from .naive import naive_mudd_mix, naive_mudd_mix_bwd

__all__ = ["naive_mudd_mix", "naive_mudd_mix_bwd"]
