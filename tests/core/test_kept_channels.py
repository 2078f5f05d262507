"""Kept channels are the same as before agfprune drove torch-pruning through its public API only
(data/kept_channels.json was written by the earlier code; see kept_channels_cases.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.core.kept_channels_cases import CASES, kept_channels

EXPECTED = json.loads((Path(__file__).parent / "data" / "kept_channels.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_kept_channels_unchanged(case: str) -> None:
    assert kept_channels(case) == EXPECTED[case]
