"""Every existing depth-flow variant x norm placement keeps its outputs bit for bit (issue 30).

The pins (tests/fixtures/flow_pins.json) were recorded from the code before the Block contract for depth flow:
initial weights, logits, loss and every gradient on fixed random weights, compared as raw-byte digests.
"""

from __future__ import annotations

import json

import pytest
from fixtures.flow_pins import PINS, cases, pin

PINNED = json.loads(PINS.read_text())
CASES = cases()


def test_every_case_is_pinned():
    assert set(CASES) == set(PINNED)


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_are_bit_identical_to_the_pins(case):
    assert pin(*CASES[case]) == PINNED[case]
