"""The MoDA paper's (arXiv 2603.15619) published numbers and the checks of ours against them, apart from the generic
analysis (moda_lab.analysis knows none of them).

- ``table6``: Table 6's rows (norm placement x depth at width 384), the orderings they claim, the paper's Δ beside
  our paired differences;
- ``orderings``: each ordering checked on our paired seeds, Holm-corrected over the family, with a verdict;
- ``reference``: all of it as the analysis' reference (``REFERENCE``), which ``python -m moda_lab.analysis`` uses by
  default (``reference=moda_paper``; ``reference=none`` leaves it out).
"""

from __future__ import annotations

from moda_paper.orderings import VERDICTS, UntestedArm, check_orderings, orderings_markdown, verdict
from moda_paper.reference import TABLE6, Table6Reference
from moda_paper.table6 import PAPER_TABLE6, paper_orderings, with_paper_delta

REFERENCE = TABLE6

__all__ = [
    "PAPER_TABLE6",
    "REFERENCE",
    "TABLE6",
    "VERDICTS",
    "Table6Reference",
    "UntestedArm",
    "check_orderings",
    "orderings_markdown",
    "paper_orderings",
    "verdict",
    "with_paper_delta",
]
