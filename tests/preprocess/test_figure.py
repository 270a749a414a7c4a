"""The raw-study QC picture: the brain mask's outline and each series' edges over the reference."""

from __future__ import annotations

import numpy as np
import pytest

from seg_edge.preprocess.figure import edges, edges_near, outline, qc_image

pytest.importorskip("PIL", reason="Pillow (extra 'preview') draws the picture")


def _ball(shape=(48, 48, 40), centre=(24, 24, 20), radius=12.0) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return (distance < radius).astype(np.float32) * 100


def test_outline_is_the_masks_rim_and_edges_follow_the_image():
    ball = _ball()
    rim = outline(ball > 0)
    assert rim.any() and not rim[24, 24, 20] and (rim <= (ball > 0)).all()
    within = np.ones(ball.shape, dtype=bool)
    here, moved = edges(ball, (1.0, 1.0, 1.0), within), edges(np.roll(ball, 5, axis=0), (1.0, 1.0, 1.0), within)
    # the ball's edge is at radius 12 from its centre: the moved ball's edges are 5 voxels further along x
    xs, xm = np.nonzero(here[:, 24, 20])[0], np.nonzero(moved[:, 24, 20])[0]
    assert abs(xs.max() - 36) <= 1 and abs(xm.max() - 41) <= 1
    near = edges_near(ball, (1.0, 1.0, 1.0), within, (24, 24, 20))
    overlap = 2 * (near[24] & here[24]).sum() / (near[24].sum() + here[24].sum())
    assert overlap > 0.8 and not near[:10, :10, :10].any()  # the shown plane's edges, nothing far from it


def test_qc_image_draws_a_row_per_series_and_one_for_the_labels():
    ball = _ball()
    labels = (_ball(radius=4) > 0).astype(np.uint8) * 2
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    with_labels = qc_image(("t1ce", ball), {"flair": ball, "t2": np.roll(ball, 3, axis=1)}, ball > 0, labels,
                           affine, (1.0, 1.0, 1.0), volumes={"WT": 1.0, "ED": 1.0}, et=4, title="ball")
    without = qc_image(("t1ce", ball), {"flair": ball}, ball > 0, None, affine, (1.0, 1.0, 1.0),
                       volumes=None, et=4, title="ball")
    assert with_labels.size[1] > 1.5 * without.size[1]  # four rows (mask, FLAIR, T2, labels) against two
    picture = np.asarray(with_labels)
    assert ((picture[..., 0] > 200) & (picture[..., 1] < 80) & (picture[..., 2] > 200)).any()  # magenta edges
