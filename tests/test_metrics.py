"""Metrics against hand-computed cases: confusion matrix (G, C, mIoU) and boundary F1 (BF)."""
import math

import numpy as np
import pytest

from minisegnet.metrics import (
    BoundaryF1,
    ConfusionMatrix,
    boundary_f1,
    boundary_f1_per_class,
    boundary_map,
    boundary_tolerance,
    dilate_disk,
    evaluate_predictions,
)

NAN = float("nan")


def assert_close_nan(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=1e-12)


# ------------------------------------------------------------------ confusion matrix
def three_class_case():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    return pred, target


def test_confusion_matrix_three_classes_by_hand():
    pred, target = three_class_case()
    cm = ConfusionMatrix(num_classes=3, ignore_index=None).update(pred, target)
    # rows = ground truth, columns = prediction
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert cm.matrix.dtype == np.int64
    assert cm.num_pixels == 6
    assert cm.global_accuracy() == pytest.approx(4 / 6)
    assert_close_nan(cm.per_class_accuracy(), [1 / 2, 1, 1 / 2])
    assert cm.class_accuracy() == pytest.approx(2 / 3)
    # IoU = TP / (GT + PR - TP): 1/(2+2-1), 2/(2+3-2), 1/(2+1-1)
    assert_close_nan(cm.per_class_iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.mean_iou() == pytest.approx(0.5)


def test_void_pixels_are_excluded_whatever_the_prediction():
    target = np.array([[0, 11, 1], [11, 1, 3]], dtype=np.uint8)
    pred = np.array([[0, 7, 1], [10, 2, 3]], dtype=np.int64)  # predictions at void pixels are never scored
    cm = ConfusionMatrix().update(pred, target)  # 11 classes, void = 11
    assert cm.num_pixels == 4
    expected = np.zeros((11, 11), dtype=np.int64)
    expected[0, 0] = expected[1, 1] = expected[1, 2] = expected[3, 3] = 1
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.global_accuracy() == pytest.approx(3 / 4)
    # classes present in the ground truth: 0, 1, 3 -> recalls 1, 1/2, 1
    assert cm.class_accuracy() == pytest.approx((1 + 0.5 + 1) / 3)
    iou = cm.per_class_iou()
    assert_close_nan(iou[[0, 1, 2, 3]], [1, 1 / 2, 0, 1])  # class 2: predicted, no ground truth -> 0
    assert np.isnan(iou[4:]).all()  # neither in ground truth nor predicted -> undefined
    assert cm.mean_iou() == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_any_ignore_index_and_any_prediction_at_ignored_pixels():
    target = np.array([[0, 255], [1, 255]], dtype=np.uint8)
    pred = np.array([[0, -7], [0, 99]], dtype=np.int16)
    cm = ConfusionMatrix(2, ignore_index=255).update(pred, target)
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 0]])
    cm = ConfusionMatrix(2, ignore_index=255).update(pred.astype(np.uint64) * 0, target)  # unsigned 64-bit works too
    assert cm.num_pixels == 2


def test_class_absent_from_split_is_left_out_of_c_but_false_positives_count_in_miou():
    target = np.array([0, 0, 0, 1])
    pred = np.array([0, 2, 0, 1])  # class 2 absent from the ground truth but predicted once
    cm = ConfusionMatrix(3, ignore_index=None).update(pred, target)
    acc = cm.per_class_accuracy()
    assert np.isnan(acc[2])
    assert cm.class_accuracy() == pytest.approx((2 / 3 + 1) / 2)
    assert_close_nan(cm.per_class_iou(), [2 / 3, 1, 0])
    assert cm.mean_iou() == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_empty_matrix_scores_are_nan_without_warnings():
    cm = ConfusionMatrix()
    with np.errstate(all="raise"):
        assert math.isnan(cm.global_accuracy())
        assert math.isnan(cm.class_accuracy())
        assert math.isnan(cm.mean_iou())
    only_void = np.full((2, 3), 11)
    cm.update(np.zeros((2, 3), dtype=np.int64), only_void)
    assert cm.num_pixels == 0


def test_update_matches_a_pixel_loop_and_batches_accumulate():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 12, size=(3, 5, 7)).astype(np.uint8)
    pred = rng.integers(0, 11, size=(3, 5, 7))
    expected = np.zeros((11, 11), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != 11:
            expected[t, p] += 1
    whole = ConfusionMatrix().update(pred, target)
    np.testing.assert_array_equal(whole.matrix, expected)
    per_image = ConfusionMatrix()
    for p, t in zip(pred, target):
        per_image.update(p, t)
    np.testing.assert_array_equal(per_image.matrix, expected)
    per_image.reset()
    assert per_image.num_pixels == 0


def test_merge_iadd_add():
    pred, target = three_class_case()
    a = ConfusionMatrix(3, None).update(pred[0], target[0])
    b = ConfusionMatrix(3, None).update(pred[1], target[1])
    both = ConfusionMatrix(3, None).update(pred, target)
    c = a + b
    np.testing.assert_array_equal(c.matrix, both.matrix)
    assert a.num_pixels == 3  # `+` leaves its operands alone
    a += b
    np.testing.assert_array_equal(a.matrix, both.matrix)
    with pytest.raises(ValueError, match="num_classes"):
        a.merge(ConfusionMatrix(4, None))
    with pytest.raises(TypeError):
        a.merge(np.zeros((3, 3)))


def test_from_matrix():
    cm = ConfusionMatrix.from_matrix(np.array([[3, 1], [0, 4]]))
    assert cm.num_classes == 2
    assert cm.global_accuracy() == pytest.approx(7 / 8)
    with pytest.raises(ValueError):
        ConfusionMatrix.from_matrix(np.zeros((2, 3), dtype=np.int64))


@pytest.mark.parametrize(
    "pred, target, error, message",
    [
        (np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64), ValueError, "same shape"),
        (np.zeros(3, np.int64), np.array([0, 12, 1]), ValueError, "target labels"),
        (np.zeros(3, np.int64), np.array([0, -1, 1]), ValueError, "target labels"),
        (np.array([0, 11, 1]), np.zeros(3, np.int64), ValueError, "predicted labels"),
        (np.zeros(3, np.float32), np.zeros(3, np.int64), TypeError, "integer"),
    ],
)
def test_update_rejects_bad_input(pred, target, error, message):
    with pytest.raises(error, match=message):
        ConfusionMatrix().update(pred, target)


def test_summary_and_table():
    pred, target = three_class_case()
    cm = ConfusionMatrix(3, None).update(pred, target)
    s = cm.summary(prefix="val_")
    assert set(s) == {
        "val_global_accuracy", "val_class_accuracy", "val_mean_iou",
        "val_per_class_iou", "val_per_class_accuracy", "val_num_pixels",
    }
    assert s["val_mean_iou"] == pytest.approx(0.5)
    assert isinstance(s["val_per_class_iou"], list) and isinstance(s["val_per_class_iou"][0], float)
    table = cm.format_table(["road", "car", "pole"], boundary_f1=0.25)
    assert "road" in table and "pole" in table
    assert "0.333" in table and "mIoU 0.5000" in table and "BF 0.2500" in table
    with pytest.raises(ValueError, match="3 class names"):
        cm.format_table(["a", "b"])
    # undefined entries print as "-"
    sparse = ConfusionMatrix(3, None).update(np.array([0]), np.array([0]))
    assert sparse.format_table().splitlines()[3].split()[-3:] == ["-", "-", "0.00%"]


# ------------------------------------------------------------------ boundary F1
def test_tolerance_is_075_percent_of_the_diagonal_unrounded():
    assert boundary_tolerance(360, 480) == pytest.approx(4.5)  # diagonal 600
    assert boundary_tolerance(120, 160) == pytest.approx(1.5)
    assert boundary_tolerance(30, 40, tolerance=0.1) == pytest.approx(5.0)


def test_boundary_map_marks_both_sides_but_not_the_frame_nor_void():
    labels = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 0, 1, 1],
        ]
    )
    expected = np.array([[0, 1, 1, 0]] * 3, dtype=bool)
    np.testing.assert_array_equal(boundary_map(labels), expected)
    valid = np.ones_like(labels, dtype=bool)
    valid[:, 2] = False  # column 2 void: no contour against it
    np.testing.assert_array_equal(boundary_map(labels, valid), np.zeros_like(expected))


def brute_force_dilation(masks, radius):
    out = np.zeros_like(masks)
    h, w = masks.shape[-2:]
    r = int(math.floor(radius))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                shifted = np.zeros_like(masks)
                shifted[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = masks[
                    ..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)
                ]
                out |= shifted
    return out


@pytest.mark.parametrize("radius", [0, 0.75, 1, 1.5, 2.5, 4.5, 5])
def test_dilate_disk_equals_union_of_disk_offsets(radius):
    masks = np.random.default_rng(1).random((2, 17, 23)) < 0.03
    np.testing.assert_array_equal(dilate_disk(masks, radius), brute_force_dilation(masks, radius))


def test_dilation_at_45_pixels_is_the_euclidean_disk():
    point = np.zeros((11, 11), dtype=bool)
    point[5, 5] = True
    disk = dilate_disk(point, 4.5)
    assert disk[5 + 4, 5] and disk[5 + 4, 5 + 2] and disk[5 + 3, 5 + 3]  # 16, 20, 18 <= 20.25
    assert not disk[5 + 5, 5] and not disk[5 + 4, 5 + 3]  # 25 > 20.25
    assert disk.sum() == 69


def two_halves(h=20, w=20, split=10):
    labels = np.zeros((h, w), dtype=np.int64)
    labels[:, split:] = 1
    return labels


def test_perfect_prediction_scores_one():
    target = two_halves()
    target[3:6, 2:5] = 4
    assert boundary_f1(target.copy(), target) == 1.0


def test_shift_within_tolerance_scores_one_and_beyond_it_less():
    target = two_halves()
    pred = two_halves(split=11)  # contour moved one pixel right
    assert boundary_f1(pred, target, tolerance_px=1.0) == 1.0
    assert boundary_f1(pred, target, tolerance_px=0.0) == 0.0
    # shift only the top half: half of each contour matches exactly (counted by hand)
    pred = target.copy()
    pred[:10, 10] = 0
    np.testing.assert_allclose(boundary_f1_per_class(pred, target, tolerance_px=0.0)[:2], [0.5, 0.5])
    assert boundary_f1(pred, target, tolerance_px=0.0) == pytest.approx(0.5)


def test_default_tolerance_follows_the_image_size():
    # 120 x 160: diagonal 200, theta = 1.5 px
    target = two_halves(120, 160, split=80)
    assert boundary_f1(two_halves(120, 160, split=81), target) == 1.0
    assert boundary_f1(two_halves(120, 160, split=82), target) == 0.0
    assert boundary_f1(two_halves(120, 160, split=82), target, tolerance=0.01) == 1.0  # theta = 2


def test_class_only_in_prediction_is_not_averaged_but_costs_precision():
    target = two_halves()
    pred = target.copy()
    pred[4:6, 3:5] = 2  # a 2x2 blob of a class absent from the ground truth
    scores = boundary_f1_per_class(pred, target, tolerance_px=0.0)
    assert np.isnan(scores[2:]).all()
    # class 0: 20 true contour pixels + 8 around the blob -> P = 20/28, R = 1 -> F1 = 5/6
    np.testing.assert_allclose(scores[:2], [5 / 6, 1.0])
    assert boundary_f1(pred, target, tolerance_px=0.0) == pytest.approx((5 / 6 + 1) / 2)


def test_class_present_but_never_predicted_scores_zero():
    target = two_halves()
    target[4:6, 3:5] = 2
    pred = two_halves()
    scores = boundary_f1_per_class(pred, target, tolerance_px=0.0)
    np.testing.assert_allclose(scores[:3], [5 / 6, 1.0, 0.0])  # class 0: P = 1, R = 20/28
    assert boundary_f1(pred, target, tolerance_px=0.0) == pytest.approx((5 / 6 + 1 + 0) / 3)


def test_single_class_images_and_empty_contours():
    full = np.full((8, 8), 3)
    assert boundary_f1(full.copy(), full) == 1.0  # no contour anywhere: nothing to miss
    assert boundary_f1(np.full((8, 8), 5), full) == 0.0  # class 3 never predicted
    spotted = full.copy()
    spotted[2:4, 2:4] = 5
    assert boundary_f1(spotted, full) == 0.0  # a contour that the ground truth does not have


def test_void_contours_are_neither_required_nor_penalised():
    target = two_halves()
    target[:, 9:12] = 11  # void band between the classes
    pred = two_halves(split=10)
    pred[:, 9:12] = 7  # whatever is predicted inside the void is ignored, class 7 is not averaged
    assert boundary_f1(pred, target, tolerance_px=0.0) == 1.0
    # a void hole inside class 0 has no contour either
    target = two_halves()
    target[3:6, 3:6] = 11
    assert boundary_f1(two_halves(), target, tolerance_px=0.0) == 1.0
    assert math.isnan(boundary_f1(pred, np.full((20, 20), 11)))  # no valid pixel: no score


def test_boundary_f1_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        boundary_f1(np.zeros((4, 4), np.int64), np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        boundary_f1(np.zeros((2, 4, 4), np.int64), np.zeros((2, 4, 4), np.int64))
    with pytest.raises(ValueError, match="target labels"):
        boundary_f1(np.zeros((4, 4), np.int64), np.full((4, 4), 12))


def test_boundary_f1_accumulator_averages_images():
    target = two_halves()
    half_shifted = target.copy()
    half_shifted[:10, 10] = 0
    bf = BoundaryF1(tolerance_px=0.0)
    assert math.isnan(bf.value())
    bf.update(target, target)  # 1.0
    bf.update(np.stack([half_shifted, target]), np.stack([target, np.full_like(target, 11)]))  # 0.5, skipped
    assert bf.num_images == 2 and bf.skipped == 1
    assert bf.value() == pytest.approx(0.75)
    np.testing.assert_allclose(bf.scores, [1.0, 0.5])
    np.testing.assert_allclose(bf.per_class()[:2], [0.75, 0.75])
    assert np.isnan(bf.per_class()[2:]).all()
    other = BoundaryF1(tolerance_px=0.0).update(half_shifted, target)
    bf += other
    assert bf.value() == pytest.approx((1 + 0.5 + 0.5) / 3)
    bf.reset()
    assert bf.num_images == 0 and math.isnan(bf.value())
    with pytest.raises(ValueError, match="same shape"):
        bf.update(target[None], target)


def test_evaluate_predictions_combines_all_scores():
    target = np.stack([two_halves(), two_halves()])
    out = evaluate_predictions(target.copy(), target)
    assert out["global_accuracy"] == 1.0 and out["mean_iou"] == 1.0 and out["boundary_f1"] == 1.0
    out = evaluate_predictions([target[0]], [target[0]], boundary=False)
    assert math.isnan(out["boundary_f1"])


@pytest.mark.gpu
def test_cupy_inputs_are_copied_to_the_host():
    from minisegnet.backend import cuda_is_available  # checked here, not at collection: it imports CuPy

    if not cuda_is_available():
        pytest.skip("needs CuPy and an NVIDIA GPU")
    import cupy

    pred, target = three_class_case()
    cm = ConfusionMatrix(3, None).update(cupy.asarray(pred), cupy.asarray(target))
    assert cm.mean_iou() == pytest.approx(0.5)
    t = two_halves()
    assert boundary_f1(cupy.asarray(t), cupy.asarray(t)) == 1.0
