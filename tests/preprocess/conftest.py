"""Small synthetic raw studies (Engineer R's writer at half scale: 2 mm phantom, the same physical head and
fields of view, thick slices 8-10 mm), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("SimpleITK")

SCALE = 0.5
SEED = 2207  # not a seed the acceptance figures use


@pytest.fixture(scope="session")
def raw_studies(tmp_path_factory) -> list[Path]:
    """Two small raw studies of two synthetic patients (index 0 and 1 of one seed)."""
    from seg_edge.synth.raw import write_raw_study

    out = tmp_path_factory.mktemp("raw")
    return [write_raw_study(out, SEED, index, scale=SCALE) for index in (0, 1)]
