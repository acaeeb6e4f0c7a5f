"""The per-slice sweep equals the per-threshold functions, including reused rows."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipeline.metrics.inputs import normalize_proposal
from pipeline.metrics.pixel import pixel_counts
from pipeline.metrics.rand import plain_pair_stats, thinned_pair_stats
from pipeline.metrics.sweep import slice_counts
from pipeline.metrics.thresholds import THRESHOLDS_0_1, THRESHOLDS_0_09
from pipeline.metrics.warping import warping_counts

from .voronoi import voronoi_gt


def test_rows_match_direct_computation_for_an_8bit_proposal():
    t = voronoi_gt(shape=(64, 72), n_cells=10, min_dist=15, seed=3)
    rng = np.random.default_rng(0)
    noisy = ndi.gaussian_filter(t.cell_mask.astype(float) + rng.normal(0, 0.4, t.gt.shape), 1.5)
    prop8 = np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)  # coarse: rows get reused
    prop = normalize_proposal(prop8)
    counts = slice_counts(t.cell_mask, prop)
    assert counts.pixel.tolist() == pixel_counts(t.cell_mask, prop, THRESHOLDS_0_1).tolist()
    for k, th in enumerate(THRESHOLDS_0_1):
        thin = thinned_pair_stats(t.cell_mask, prop, th)
        plain = plain_pair_stats(t.cell_mask, prop, th)
        assert counts.thinned[k].tolist() == list(thin[:5])
        assert np.allclose(counts.thinned_entropy[k], thin[5:], rtol=1e-13, atol=1e-13)
        assert counts.plain[k].tolist() == list(plain[:5])
    for k, th in enumerate(THRESHOLDS_0_09):
        assert counts.warp[k].tolist() == warping_counts(t.cell_mask, prop, th).tolist()
    assert counts.jain_remaining == counts.warp[5, 0]


def test_binary_proposal_reuses_every_row():
    t = voronoi_gt(shape=(48, 48), n_cells=6, min_dist=15, seed=1)
    counts = slice_counts(t.cell_mask, t.cell_mask.astype(float))
    assert (counts.thinned == counts.thinned[0]).all()
    assert (counts.pixel == counts.pixel[0]).all()
