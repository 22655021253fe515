"""Metric functions against hand-computed values."""

import numpy as np
import pytest

from crackseg import metrics


def _line(shape=(50, 50), x=10) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[5:45, x] = True
    return mask


def test_empty_truth_and_empty_prediction_are_perfect():
    empty = np.zeros((8, 8), bool)
    counts = metrics.confusion(empty, empty)
    assert (counts.dice, counts.iou, counts.precision, counts.recall) == (1, 1, 1, 1)
    assert metrics.tolerance_counts(empty, empty, 2).f1 == 1


def test_predictions_on_an_empty_truth_and_a_missed_crack_score_zero():
    empty, full = np.zeros((8, 8), bool), np.ones((8, 8), bool)
    false_alarm = metrics.confusion(full, empty)
    assert (false_alarm.dice, false_alarm.iou, false_alarm.precision, false_alarm.recall) == (0, 0, 0, 1)
    missed = metrics.confusion(empty, full)
    assert (missed.dice, missed.precision, missed.recall) == (0, 0, 0)
    assert metrics.tolerance_counts(full, empty, 2).f1 == 0 and metrics.tolerance_counts(empty, full, 2).f1 == 0


def test_all_crack_prediction_of_all_crack_truth():
    full = np.ones((8, 8), bool)
    counts = metrics.confusion(full, full)
    assert (counts.tp, counts.fp, counts.fn, counts.dice, counts.iou) == (64, 0, 0, 1, 1)


def test_partial_overlap_counts():
    truth = np.zeros((4, 4), bool)
    truth[0, :] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = pred[1, :2] = True  # 2 right, 2 wrong
    counts = metrics.confusion(pred, truth)
    assert (counts.tp, counts.fp, counts.fn) == (2, 2, 2)
    assert counts.dice == pytest.approx(0.5) and counts.iou == pytest.approx(1 / 3)


@pytest.mark.parametrize("shift, f1_exact, f1_2px", [(0, 1.0, 1.0), (1, 0.0, 1.0), (2, 0.0, 1.0), (3, 0.0, 0.0)])
def test_shifted_thin_line_under_0_and_2_px_tolerance(shift, f1_exact, f1_2px):
    truth, pred = _line(), _line(x=10 + shift)
    assert metrics.confusion(pred, truth).dice == f1_exact
    assert metrics.tolerance_counts(pred, truth, 0).f1 == f1_exact
    assert metrics.tolerance_counts(pred, truth, 2).f1 == f1_2px


def test_tolerance_precision_and_recall_are_counted_separately():
    truth = _line()
    pred = _line() | _line(x=40)  # the crack, plus a false line far away
    tol = metrics.tolerance_counts(pred, truth, 2)
    assert (tol.precision, tol.recall) == (0.5, 1.0)
    assert tol.f1 == pytest.approx(2 / 3)


def _toy_set():
    """Three photos of four pixels: (truth, prob)."""
    photos = [([1, 1, 0, 0], [0.9, 0.6, 0.4, 0.1]),
              ([1, 0, 0, 0], [0.3, 0.8, 0.2, 0.1]),
              ([0, 0, 0, 0], [0.7, 0.2, 0.1, 0.1])]
    return [metrics.level_histograms(np.array(p, np.float32), np.array(t, bool)) for t, p in photos]


def test_ods_is_the_best_pooled_threshold():
    f1, threshold, counts = metrics.ods(_toy_set())
    # pooled: at thresholds in (0.2, 0.3] the predictions are 0.9, 0.6, 0.4, 0.3, 0.8, 0.7 -> tp 3, fp 3, fn 0
    assert (counts.tp, counts.fp, counts.fn) == (3, 3, 0)
    assert f1 == pytest.approx(6 / 9)
    assert threshold == 52 / 256  # the lowest grid threshold above 0.2


def test_dataset_mean_weighs_each_dataset_the_same_where_pooled_counts_follow_the_largest():
    large = [metrics.level_histograms(np.array([0.9] * 10 + [0.5] * 10, np.float32), np.arange(20) < 10)]
    small = [metrics.level_histograms(np.array([0.3, 0.1], np.float32), np.array([True, False]))]
    # pooled: above 0.5 tp 10, fn 1 -> 20/21, best from 129/256 up; per dataset, at (0.1, 0.3]
    # large 20/30 and small 1, mean 5/6, better than above 0.5 (large 1, small 0)
    assert metrics.ods(large + small)[:2] == (pytest.approx(20 / 21), 129 / 256)
    assert metrics.dataset_mean([large, small]) == (pytest.approx(5 / 6), 26 / 256)
    assert metrics.dataset_mean([_toy_set()]) == metrics.ods(_toy_set())[:2]
    assert metrics.dataset_mean([large, []]) == metrics.dataset_mean([large])  # a dataset without photos has no say
    no_cracks = [metrics.level_histograms(np.array([0.9, 0.2], np.float32), np.zeros(2, bool))]
    # nor one without cracks: predicting nothing (above 0.9) would score it 1 and the toy set 0
    assert metrics.dataset_mean([_toy_set(), no_cracks]) == metrics.ods(_toy_set())[:2]
    assert metrics.dataset_mean([no_cracks]) == metrics.ods(no_cracks)[:2]
    with pytest.raises(ValueError, match="at least one dataset"):
        metrics.dataset_mean([[]])


def test_the_recall_rule_is_the_most_precise_threshold_reaching_the_mean_recall():
    # pooled toy set, crack 0.9, 0.6, 0.3: recall 1/3 up to 0.9 (precision 1 above 0.8), 2/3 up to 0.6
    # (precision 2/4 above 0.4), 1 up to 0.3 (3/6 above 0.2); the highest threshold among equals
    assert metrics.dataset_mean_at_recall([_toy_set()], 0.3) == (pytest.approx(1.0), 230 / 256)
    assert metrics.dataset_mean_at_recall([_toy_set()], 0.6) == (pytest.approx(0.5), 153 / 256)
    assert metrics.dataset_mean_at_recall([_toy_set()], 0.9) == (pytest.approx(0.5), 76 / 256)
    large = [metrics.level_histograms(np.array([0.9] * 10 + [0.5] * 10, np.float32), np.arange(20) < 10)]
    small = [metrics.level_histograms(np.array([0.3, 0.1], np.float32), np.array([True, False]))]
    # mean recall: 1 up to 0.3 (levels 76 and below), 1/2 up to 0.9 (the small crack missed);
    # mean precision: (1/2 + 1/2) / 2 up to 0.1, (1/2 + 1) / 2 up to 0.3, then (1/2 + 0) / 2 and (1 + 0) / 2
    # above 0.5: a dataset where nothing is predicted has precision 0, so missing it never looks precise
    assert metrics.dataset_mean_at_recall([large, small], 0.8) == (pytest.approx(3 / 4), 76 / 256)
    assert metrics.dataset_mean_at_recall([large, small], 0.5) == metrics.dataset_mean_at_recall([large, small], 0.8)
    assert metrics.dataset_mean_at_recall([large, []], 0.8) == metrics.dataset_mean_at_recall([large], 0.8)
    with pytest.raises(ValueError, match="at least one dataset"):
        metrics.dataset_mean_at_recall([[]], 0.8)


def test_ois_pools_each_photos_best_threshold():
    f1, thresholds = metrics.ois(_toy_set())
    # photo 1 at (0.4, 0.6]: tp 2; photo 2 at (0.2, 0.3]: tp 1, fp 1; photo 3 above 0.7: nothing
    assert f1 == pytest.approx(6 / 7)
    assert 0.4 < thresholds[0] <= 0.6 and 0.2 < thresholds[1] <= 0.3 and thresholds[2] > 0.7


def test_ois_predicts_as_little_as_it_can_on_a_photo_without_cracks():
    empty = metrics.level_histograms(np.array([1.0, 1.0, 0.5, 0.0], np.float32), np.zeros(4, bool))
    perfect = metrics.level_histograms(np.array([0.9, 0.1], np.float32), np.array([True, False]))
    f1, thresholds = metrics.ois([empty, perfect])
    assert thresholds[0] == 255 / 256 and f1 == pytest.approx(2 / 4)  # tp 1, fp 2 (the two ones), fn 0


def test_leaderboard_protocol_averages_per_photo_curves():
    board = metrics.leaderboard(_toy_set())
    # mean per-photo F1 is best above 0.7: photo 1 keeps 0.9 only (2/3), photo 2 keeps 0.8 (0),
    # photo 3 predicts nothing (1)
    assert board["ods"] == pytest.approx(5 / 9) and board["ods_threshold"] == 180 / 256
    assert board["ois"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    # crack and background IoU averaged per photo there: (1/2 + 2/3) / 2, (0 + 2/4) / 2, (1 + 1) / 2
    assert board["miou"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0.25 + 1) / 3)


def test_sweep_matches_exact_counts_at_every_grid_threshold():
    rng = np.random.default_rng(0)
    prob, truth = rng.random((40, 60)).astype(np.float32), rng.random((40, 60)) < 0.1
    tp, fp, fn = metrics.sweep(metrics.level_histograms(prob, truth))
    for k in (0, 1, 77, 128, 255):
        counts = metrics.confusion(prob >= metrics.THRESHOLDS[k], truth)
        assert (tp[k], fp[k], fn[k]) == (counts.tp, counts.fp, counts.fn)
    precision, recall = metrics.precision_recall_curve([metrics.level_histograms(prob, truth)])
    assert recall[0] == 1 and np.all(np.diff(recall) <= 0)
