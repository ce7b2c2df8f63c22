"""The Table 6 experiments build the paper's model shape: parameter counts within 2% of arXiv 2603.15619 Table 6."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_cfg
from moda_lab.config import run_config_from_dict
from moda_lab.model import GPT
from moda_paper.table6 import MODA_DEPTH_KV, MODA_FFN_KV, OLMO2, PAPER_TABLE6

# The model config of each of Table 6's variants (width 384, 6 query / 2 KV heads).
MODEL_CONFIG = {OLMO2: "residual", MODA_DEPTH_KV: "moda_depth_kv", MODA_FFN_KV: "moda"}
# (experiment, model config, paper's params in millions), from moda_paper's copy of Table 6.
PAPER = sorted({(f"table6_{r.layers}l", MODEL_CONFIG[r.variant], r.params_m) for r in PAPER_TABLE6})


@pytest.mark.parametrize("experiment,model,paper_m", PAPER, ids=[f"{e}-{m}" for e, m, _ in PAPER])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_table6_params_match_paper(experiment: str, model: str, paper_m: float, norm: str) -> None:
    cfg = compose_cfg([f"experiment={experiment}", f"model={model}", f"norm={norm}"])
    run = run_config_from_dict(cfg)
    assert run.model.ffn_dim == 4 * run.model.d_model == 1536
    assert run.data.vocab_size == run.model.vocab_size <= 65535  # the uint16 packing's limit
    with torch.device("meta"):  # shapes only: no memory, no init time
        params = GPT(run.model).num_params()
    assert abs(params / 1e6 - paper_m) / paper_m < 0.02, f"{params / 1e6:.2f}M vs the paper's {paper_m}M"
