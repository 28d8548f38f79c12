"""Transforms: size strings, resizing (labels nearest), flips and crops keep image and label aligned,
mean/std, normalisation, the train/eval compositions."""
import numpy as np
import pytest

from minisegnet.data import (
    EvalTransform,
    TrainTransform,
    compute_mean_std,
    hflip,
    normalize,
    parse_size,
    random_crop,
    resize_image,
    resize_label,
)


def coded_pair(h=6, w=8):
    """An image whose red channel is the column index, green the row index and blue the label."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 12, (h, w)).astype(np.uint8)
    image = np.stack([np.broadcast_to(np.arange(w), (h, w)), np.broadcast_to(np.arange(h)[:, None], (h, w)), label], -1)
    return image.astype(np.uint8), label


@pytest.mark.parametrize("text,expected", [("180x240", (180, 240)), (" 90 X 120 ", (90, 120)), ((4, 5), (4, 5)),
                                           ("360×480", (360, 480))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["180", "180x", "x240", "180x240x3", "-1x4", "0x4", "axb", "1.5x2", (3,), (0, 4),
                                 (2.5, 3), None, "", (True, 2)])
def test_parse_size_errors(bad):
    with pytest.raises(ValueError, match="bad size"):
        parse_size(bad)


def test_resize_label_nearest_exact():
    label = np.arange(16, dtype=np.uint8).reshape(4, 4)
    half = resize_label(label, (2, 2))
    np.testing.assert_array_equal(half, label[1::2, 1::2])  # the pixel under each output centre
    double = resize_label(label, (8, 8))
    np.testing.assert_array_equal(double, label.repeat(2, 0).repeat(2, 1))
    batch = np.stack([label, label + 1])
    np.testing.assert_array_equal(resize_label(batch, (2, 2))[1], half + 1)  # leading axes kept
    assert resize_label(label, (4, 4)) is label


def test_resize_label_never_invents_values():
    rng = np.random.default_rng(1)
    label = rng.choice([0, 3, 11], size=(37, 53)).astype(np.uint8)
    for size in [(18, 24), (50, 70), (5, 3)]:
        out = resize_label(label, size)
        assert out.shape == size and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 3, 11}


def test_resize_image_bilinear():
    image = np.full((36, 48, 3), 77, np.uint8)
    out = resize_image(image, (18, 24))
    assert out.shape == (18, 24, 3) and out.dtype == np.uint8
    assert np.all(out == 77)  # a constant stays constant
    ramp = np.broadcast_to(np.linspace(0, 255, 48).astype(np.uint8)[None, :, None], (36, 48, 3)).copy()
    out = resize_image(ramp, (36, 24))
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # blends, keeps the ramp monotone
    assert len(np.unique(out[0, :, 0])) > 12  # intermediate values: not nearest neighbour
    assert resize_image(image, (36, 48)) is image
    with pytest.raises(ValueError, match="resize_image"):
        resize_image(image[..., 0], (4, 4))


def test_hflip_keeps_alignment():
    image, label = coded_pair()
    fi, fl = hflip(image, label)
    np.testing.assert_array_equal(fl, label[:, ::-1])
    np.testing.assert_array_equal(fi[..., 2], fl)  # the label still sits under its pixel
    np.testing.assert_array_equal(fi[0, :, 0], np.arange(8)[::-1])
    # batches flip along W too
    bi, bl = hflip(np.stack([image, image]), np.stack([label, label]))
    np.testing.assert_array_equal(bl[1], fl)
    np.testing.assert_array_equal(bi[1], fi)


def test_random_crop_same_window():
    image, label = coded_pair(10, 12)
    rng = np.random.default_rng(3)
    corners = set()
    for _ in range(30):
        ci, cl = random_crop(image, label, (4, 5), rng)
        assert ci.shape == (4, 5, 3) and cl.shape == (4, 5)
        np.testing.assert_array_equal(ci[..., 2], cl)
        top, left = int(ci[0, 0, 1]), int(ci[0, 0, 0])
        np.testing.assert_array_equal(cl, label[top:top + 4, left:left + 5])
        corners.add((top, left))
    assert len(corners) > 10  # the window moves
    assert all(0 <= t <= 6 and 0 <= left <= 7 for t, left in corners)
    a = random_crop(image, label, (4, 5), np.random.default_rng(9))
    b = random_crop(image, label, (4, 5), np.random.default_rng(9))
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="larger"):
        random_crop(image, label, (11, 5), rng)


def test_compute_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 7, 9, 3)).astype(np.uint8)
    mean, std = compute_mean_std(images)
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)
    assert mean.dtype == np.float32 and mean.shape == (3,)
    m2, s2 = compute_mean_std([(img, None) for img in images])  # a dataset-like list of pairs
    np.testing.assert_array_equal(m2, mean)
    np.testing.assert_array_equal(s2, std)
    m3, _ = compute_mean_std(list(images))
    np.testing.assert_array_equal(m3, mean)
    with pytest.raises(ValueError, match="uint8"):
        compute_mean_std(images.astype(np.float32))


def test_normalize():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 4, 3)).astype(np.uint8)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    out = normalize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == (2, 3, 3, 4) and out.flags.c_contiguous
    expected = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    out64 = normalize(images, mean, std, dtype=np.float64)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, expected, rtol=1e-12, atol=1e-12)
    plain = normalize(images[0])
    assert plain.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(plain[0], images[0].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="std"):
        normalize(images, mean, [0.1, 0.0, 0.1])


def test_train_and_eval_transforms():
    image, label = coded_pair(12, 16)
    ev = EvalTransform((6, 8))
    ei, el = ev(image, label)
    assert ei.shape == (6, 8, 3)
    np.testing.assert_array_equal(el, resize_label(label, (6, 8)))

    always = TrainTransform(flip=1.0)
    fi, fl = always(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(fl, label[:, ::-1])
    never = TrainTransform(flip=False)
    _, nl = never(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(nl, label)

    tr = TrainTransform("12x16", flip=True, crop=(5, 7))
    flips = 0
    for seed in range(20):
        a = tr(image, label, np.random.default_rng(seed))
        b = tr(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])  # same generator state, same pair
        assert a[0].shape == (5, 7, 3) and a[1].shape == (5, 7)
        np.testing.assert_array_equal(a[0][..., 2], a[1])  # still aligned
        flips += int(a[0][0, 1, 0]) < int(a[0][0, 0, 0])  # columns run backwards
    assert 3 < flips < 17
    with pytest.raises(ValueError):
        TrainTransform(flip=1.5)


# -- scale jitter -------------------------------------------------------------------------------
VOID = 11  # minisegnet.data.VOID_LABEL


def sparse_pair(h=12, w=16):
    """A random image and a label that uses only some classes (0, 2, 5, 7), never void."""
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (h, w, 3)).astype(np.uint8)  # no 0: padding is told from content
    label = rng.choice(np.array([0, 2, 5, 7], dtype=np.uint8), (h, w))
    return image, label


def test_void_label_is_the_packages():
    from minisegnet.data import VOID_LABEL

    assert VOID_LABEL == VOID and TrainTransform(scale=(0.5, 2)).void_label == VOID_LABEL


@pytest.mark.parametrize("crop", [None, (5, 7)])
@pytest.mark.parametrize("size", [None, (10, 12)])
def test_scale_jitter_keeps_the_output_size_and_adds_only_void(crop, size):
    image, label = sparse_pair()
    tr = TrainTransform(size=size, flip=True, crop=crop, scale=(0.25, 1.8))
    expected = crop if crop is not None else size if size is not None else label.shape
    padded = 0
    for seed in range(30):
        ti, tl = tr(image, label, np.random.default_rng(seed))
        assert ti.shape == (*expected, 3) and tl.shape == tuple(expected)
        assert ti.dtype == np.uint8 and tl.dtype == label.dtype
        assert set(np.unique(tl)) <= {0, 2, 5, 7, VOID}
        padded += bool((tl == VOID).any())
    assert 0 < padded < 30  # some draws shrink (padding), some enlarge (no padding)


@pytest.mark.parametrize("crop", [None, (5, 7)])
def test_a_scale_of_one_is_the_transform_without_scale(crop):
    # lo == hi draws no factor, and a pair that keeps its size is cropped as before: the same pairs
    # and the same use of the generator
    image, label = coded_pair(12, 16)
    plain, one = TrainTransform(crop=crop), TrainTransform(crop=crop, scale=(1, 1))
    for seed in range(10):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        a, b = plain(image, label, r1), one(image, label, r2)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert r1.random() == r2.random()  # the generator was used alike


@pytest.mark.parametrize("flip", [False, True])
def test_half_scale_pads_with_void_and_zero_around_the_nearest_resized_pair(flip):
    image, label = sparse_pair(12, 16)
    tr = TrainTransform(flip=1.0 if flip else False, scale=(0.5, 0.5))
    small_label, small_image = resize_label(label, (6, 8)), resize_image(image, (6, 8))
    if flip:
        small_image, small_label = hflip(small_image, small_label)
    offsets = set()
    for seed in range(20):
        ti, tl = tr(image, label, np.random.default_rng(seed))
        assert ti.shape == (12, 16, 3) and tl.shape == (12, 16)
        rows, cols = np.nonzero(tl != VOID)
        top, left = rows.min(), cols.min()
        valid = np.zeros((12, 16), bool)
        valid[top : top + 6, left : left + 8] = True
        np.testing.assert_array_equal(tl != VOID, valid)  # void is exactly the border
        assert (ti[~valid] == 0).all()  # and the image is 0 there
        np.testing.assert_array_equal(tl[valid].reshape(6, 8), small_label)
        np.testing.assert_array_equal(ti[valid].reshape(6, 8, 3), small_image)
        offsets.add((int(top), int(left)))
    assert len(offsets) > 3  # placed at a random offset


@pytest.mark.parametrize("crop", [None, (5, 7)])
def test_double_scale_is_a_window_of_the_enlarged_label_without_void(crop):
    image, label = sparse_pair(12, 16)
    big = resize_label(label, (24, 32))
    tr = TrainTransform(flip=False, crop=crop, scale=(2, 2))
    h, w = crop if crop is not None else (12, 16)
    windows = set()
    for seed in range(10):
        ti, tl = tr(image, label, np.random.default_rng(seed))
        assert tl.shape == (h, w) and not (tl == VOID).any() and set(np.unique(tl)) <= {0, 2, 5, 7}
        assert (ti != 0).any()
        found = [(t, l) for t in range(24 - h + 1) for l in range(32 - w + 1)
                 if np.array_equal(big[t : t + h, l : l + w], tl)]
        assert found, "not a window of the nearest-neighbour enlargement"
        windows.add(found[0])
    assert len(windows) > 1  # a random window


def test_scale_jitter_is_reproducible_from_the_generator():
    image, label = sparse_pair()
    tr = TrainTransform(crop=(8, 12), scale=(0.5, 1.5))
    outputs = []
    for seed in range(8):
        a = tr(image, label, np.random.default_rng(seed))
        b = tr(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        outputs.append(a[1].tobytes() + a[0].tobytes())
    assert len(set(outputs)) == len(outputs)  # other seeds, other pairs
    # through the loader: the same seed gives the same batches, another seed others
    from minisegnet.data import ArrayDataset, BatchLoader

    images, labels = np.stack([image] * 4), np.stack([label] * 4)

    def batches(seed):
        loader = BatchLoader(ArrayDataset(images, labels), 2, shuffle=True, seed=seed, transform=tr, prefetch=False)
        return [(x.copy(), y.copy()) for x, y in loader.iter_epoch(0)]

    first, again, other = batches(3), batches(3), batches(4)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(y1, y2) for (_, y1), (_, y2) in zip(first, other))


@pytest.mark.parametrize("bad", [(0, 1), (-0.5, 1), (1.2, 0.8), (float("nan"), 1), (1, float("inf")), (0.5, 1, 2),
                                 0.5, "0.5,1", ("a", "b"), (True, 1)])
def test_scale_jitter_is_validated(bad):
    with pytest.raises(ValueError, match=r"TrainTransform: scale must be a pair \(lo, hi\).*0 < lo <= hi.*got"):
        TrainTransform(scale=bad)


def test_scale_jitter_repr():
    assert TrainTransform(scale=(0.75, 1.25)).scale == (0.75, 1.25)
    assert "scale=(0.75, 1.25)" in repr(TrainTransform(scale=(0.75, 1.25)))
    assert "scale=None" in repr(TrainTransform())
