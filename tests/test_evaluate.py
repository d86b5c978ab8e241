"""fairattack.evaluate: per-victim error rates and their mean, against a hand count."""

import numpy as np
import pytest
import torch

import fairattack as fa
from fairattack.evaluate import evaluate


class ChannelMean(torch.nn.Module):
    """Predicts class round(mean of one channel): a victim whose answers the test controls."""

    def __init__(self, channel: int, classes: int = 10):
        super().__init__()
        self.channel = channel
        self.classes = classes

    def forward(self, x):
        level = x[:, self.channel].mean(dim=(1, 2))
        return -(torch.arange(self.classes, dtype=x.dtype) - level[:, None]).abs()


@pytest.fixture(scope="module")
def victims():
    return {"red": fa.load_model(ChannelMean(0), name="red", mode="pixels"),
            "green": fa.load_model(ChannelMean(1), name="green", mode="pixels")}


def uniform_images(red, green, size=5):
    images = np.zeros((len(red), size, size, 3), np.uint8)
    images[..., 0] = np.asarray(red)[:, None, None]
    images[..., 1] = np.asarray(green)[:, None, None]
    return images


def test_error_rates_match_hand_count(victims):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 37)
    red = np.where(rng.random(37) < 0.3, labels, (labels + 1) % 10)
    green = np.where(rng.random(37) < 0.6, labels, (labels + 3) % 10)
    images = uniform_images(red, green)
    rates = evaluate(victims, images, labels, batch_size=8)
    want_red = np.mean(red != labels)
    want_green = np.mean(green != labels)
    assert list(rates.index) == ["red", "green", "mean"]
    assert rates["red"] == pytest.approx(want_red)
    assert rates["green"] == pytest.approx(want_green)
    assert rates["mean"] == pytest.approx((want_red + want_green) / 2)
    same = evaluate(list(victims.values()), images, labels, batch_size=1)  # list: keyed by .name
    np.testing.assert_array_equal(same.values, rates.values)


def test_float_images_are_rounded_like_saved_images(victims):
    images = uniform_images([0, 0, 0], [0, 0, 0]).astype(np.float32)
    images[0, ..., 0] = 2.6    # rounds to 3 (truncation would give 2)
    images[1, ..., 0] = 0.0
    images[2, ..., 0] = 9.4    # rounds to 9
    rates = evaluate({"red": victims["red"]}, images, np.array([3, 0, 9]))
    assert rates["red"] == 0.0
    rates = evaluate(victims["red"], images, np.array([2, 0, 9]))  # a single Model
    assert rates["red"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("value, match", [(-7.0, r"\[0, 255\]"), (255.5, r"\[0, 255\]"),
                                          (300.0, r"\[0, 255\]")])
def test_values_outside_the_pixel_range_are_errors_not_clipped(victims, value, match):
    images = uniform_images([3, 3], [3, 3]).astype(np.float32)
    images[1, 0, 0, 0] = value
    with pytest.raises(ValueError, match=match):
        evaluate(victims, images, [3, 3])


def test_bad_inputs(victims):
    images = uniform_images([1, 2], [1, 2])
    with pytest.raises(ValueError, match=r"images must be RGB images of shape \(N, H, W, 3\)"):
        evaluate(victims, images.transpose(0, 3, 1, 2), [1, 2])
    with pytest.raises(ValueError, match=r"labels has 3 entries but there are 2 images"):
        evaluate(victims, images, [1, 2, 3])
    with pytest.raises(ValueError, match=r"labels\[1\]=12 out of range \[0, 10\)"):
        evaluate(victims, images, [1, 12])
    with pytest.raises(ValueError, match=r"labels\[0\]=-1"):
        evaluate(victims, images, [-1, 2])
    with pytest.raises(TypeError, match="labels"):
        evaluate(victims, images, [1.5, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(victims, np.full((1, 4, 4, 3), np.nan, np.float32), [1])
    with pytest.raises(ValueError, match="empty"):
        evaluate(victims, images[:0], np.array([], np.int64))
    with pytest.raises(ValueError, match="unique"):
        evaluate([victims["red"], victims["red"]], images, [1, 2])
    with pytest.raises(ValueError, match="at least one"):
        evaluate({}, images, [1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(victims, images, [1, 2], batch_size=0)


def test_real_victim_on_samples(lite0, samples_dir):
    from fairattack import data

    ds = data.open_dataset(samples_dir)
    images, labels, _ = next(data.iter_batches(ds, 224, batch_size=4))
    errors = np.mean(lite0.predict(images) != labels)
    flipped = images[:, :, ::-1]  # a different image set for the second "victim" call
    rates = evaluate({"lite0": lite0}, np.concatenate([images, flipped]),
                     np.concatenate([labels, labels]), batch_size=3)
    flipped_errors = np.mean(lite0.predict(flipped) != labels)
    assert rates["lite0"] == pytest.approx((errors + flipped_errors) / 2)
