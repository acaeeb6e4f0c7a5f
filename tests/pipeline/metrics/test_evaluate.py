"""evaluate_stack: the spec's sanity cases on a Voronoi tessellation, and the driver contract."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.evaluate import evaluate_stack, reduce_counts
from pipeline.metrics.contingency import PairStats
from pipeline.metrics.info import vinfo_f
from pipeline.metrics.pixel import f_score
from pipeline.metrics.rand import rand2012_counts, vrand_f
from pipeline.metrics.sweep import slice_counts
from pipeline.metrics.thresholds import THRESHOLDS_0_1, THRESHOLDS_0_09

from . import voronoi as V

ERRORS = ("pixel_error", "rand_error", "info_error", "rand_error_2012", "warping_error", "warping_error_jain")


@pytest.fixture(scope="module")
def tess() -> V.Tessellation:
    return V.voronoi_gt()


def run(pred: np.ndarray, tess: V.Tessellation, **kw) -> dict:
    return evaluate_stack(pred, tess.gt, workers=1, **kw)


@pytest.mark.parametrize("kind", ["binary", "probability", "uint8"])
def test_identical_proposal_scores_zero(tess, kind):
    pred = {
        "binary": tess.cell_mask.astype(float),
        "probability": np.where(tess.cell_mask, 0.9, 0.05),
        "uint8": tess.gt,
    }[kind]
    r = run(pred, tess)
    assert all(r[k] == 0.0 for k in ERRORS), {k: r[k] for k in ERRORS}
    assert r["v_rand"] == 1.0 and r["v_info"] == 1.0


def test_gap_in_one_membrane_is_a_merge(tess):
    base = run(tess.cell_mask.astype(float), tess)
    r = run(V.merge_gap(tess).astype(float), tess)
    assert r["rand_error"] > 0.01 and r["rand_error_2012"] > 0.01 and r["info_error"] > 0.001
    assert r["warping_error"] > 0 and r["warping_merges"] > 0 and r["warping_splits"] == 0
    assert r["pixel_error"] < 0.002 and r["pixel_error"] < r["rand_error"] / 10
    assert base["rand_error"] == 0.0


def test_line_across_one_cell_is_a_split(tess):
    r = run(V.split_line(tess).astype(float), tess)
    assert r["rand_error"] > 0.01 and r["rand_error_2012"] > 0.01
    assert r["warping_error"] > 0 and r["warping_splits"] > 0 and r["warping_merges"] == 0


def test_one_pixel_translation(tess):
    r = run(V.translate(tess).astype(float), tess)
    assert r["pixel_error"] > 0.02  # rises clearly
    height, width = tess.gt.shape
    assert r["warping_error"] <= 1.0 / (height * width)  # at most about one pixel
    assert r["rand_error"] < 0.01  # small after thinning


def test_thicker_membranes_thinned_vs_2012(tess):
    r = run(V.thicker(tess).astype(float), tess)
    assert r["rand_error"] < 0.005  # thinning absorbs the extra pixel
    assert r["rand_error_2012"] > 0.03  # without thinning every extra pixel is a singleton
    assert r["warping_error"] == 0.0


def test_isolated_dots_inside_cells(tess):
    r = run(V.dots(tess).astype(float), tess)
    assert r["rand_error"] == 0.0 and r["info_error"] == 0.0
    assert r["warping_error"] == 0.0  # the dots are hole additions, not splits/merges
    assert 0 < r["pixel_error"] < 0.001


def test_gt_label_renumbering_and_encoding_do_not_matter(tess):
    rng = np.random.default_rng(5)
    pred = np.where(V.merge_gap(tess), 0.8, 0.1)
    lut = np.concatenate([[0], rng.permutation(np.arange(1, tess.instances.max() + 1)) * 3])
    variants = [tess.gt, (tess.gt > 0).astype(np.uint8), lut[tess.instances], tess.gt > 0]
    results = [evaluate_stack(pred, g, workers=1) for g in variants]
    assert all(r == results[0] for r in results[1:])


def test_binary_proposal_uses_threshold_zero_for_rand_and_info(tess):
    r = run(V.split_line(tess), tess, curves=True)
    assert r["binary_proposal"] is True
    assert r["curves"]["rand_error"]["thresholds"] == [0.0]
    assert r["curves"]["info_error"]["thresholds"] == [0.0]
    assert r["rand_threshold"] == 0.0 and r["info_threshold"] == 0.0


def test_curves_and_best_thresholds(tess):
    pred = np.where(V.merge_gap(tess), 0.65, 0.25)
    r = run(pred, tess, curves=True)
    c = r["curves"]
    assert c["pixel_error"]["thresholds"] == list(THRESHOLDS_0_1)
    assert c["warping_error"]["thresholds"] == list(THRESHOLDS_0_09)
    for key, best in [("pixel_error", "pixel_threshold"), ("rand_error", "rand_threshold"),
                      ("rand_error_2012", "rand_2012_threshold")]:
        values = c[key]["values"]
        k = int(np.argmin(values))  # first minimum error = first maximum F
        assert r[key] == pytest.approx(values[k]) and r[best] == c[key]["thresholds"][k]
    assert r["warping_error"] == min(c["warping_error"]["values"])
    assert r["warping_error_jain"] == pytest.approx(c["warping_error_jain"]["values"][5])
    assert r["pixel_threshold"] == 0.30000000000000004  # first threshold that splits 0.25 / 0.65


def test_macro_and_micro_averaging():
    t1 = V.voronoi_gt(shape=(64, 64), n_cells=8, min_dist=15, seed=11)
    t2 = V.voronoi_gt(shape=(64, 64), n_cells=8, min_dist=15, seed=12)
    preds = np.stack([V.merge_gap(t1), V.split_line(t2)]).astype(float)
    gts = np.stack([t1.gt, t2.gt])
    counts = [slice_counts(g > 0, p) for g, p in zip(gts, preds)]
    stats = [PairStats(*c.thinned[0], *c.thinned_entropy[0]) for c in counts]
    plain = [PairStats(*c.plain[0], 0.0, 0.0, 0.0) for c in counts]
    r = reduce_counts(counts, binary=True)
    assert r["v_rand"] == pytest.approx(np.mean([vrand_f(s) for s in stats]))  # macro
    assert r["v_info"] == pytest.approx(np.mean([vinfo_f(s) for s in stats]))
    tp, fp, fn = np.sum([rand2012_counts(s) for s in plain], axis=0)
    assert r["rand_error_2012"] == pytest.approx(1 - f_score(tp, fp, fn))  # micro
    assert evaluate_stack(preds, gts, workers=1) == r


def test_threads_give_identical_results(tess):
    pred = np.stack([np.where(V.merge_gap(tess), 0.7, 0.2), np.where(V.split_line(tess), 0.6, 0.3)])
    gt = np.stack([tess.gt, tess.gt])
    assert evaluate_stack(pred, gt, workers=1) == evaluate_stack(pred, gt, workers=2)


def test_2d_input_is_one_slice(tess):
    r = evaluate_stack(tess.cell_mask, tess.gt)
    assert r["n_slices"] == 1 and r["height"] == 160


@pytest.mark.parametrize(
    ("pred", "gt", "message"),
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "expected pred and gt of the same shape"),
        (np.full((4, 4), 1.2), np.zeros((4, 4)), r"expected pred values in \[0, 1\]"),
        (np.full((4, 4), np.nan), np.zeros((4, 4)), "expected pred without NaN"),
        (np.zeros(4), np.zeros(4), "expected pred to be a 2D image"),
    ],
)
def test_bad_inputs_raise(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        evaluate_stack(pred, gt)


def test_workers_must_be_positive(tess):
    with pytest.raises(ValueError, match="expected workers >= 1"):
        evaluate_stack(tess.gt, tess.gt, workers=0)
