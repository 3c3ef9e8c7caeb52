"""Datasets, augmentation and the per-class sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agkd_bml.data import Augment, ImageSampler, iterate_batches, load_dataset
from agkd_bml.errors import UserError


def test_digits_is_deterministic_real_and_16px(digits):
    again = load_dataset("digits")
    assert torch.equal(digits.x_train, again.x_train) and torch.equal(digits.y_test, again.y_test)
    assert digits.x_train.shape[1:] == (1, 16, 16) and digits.x_train.dtype == torch.uint8
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert set(digits.y_train.tolist()) == set(range(10))
    assert digits.spec.default_eps == pytest.approx(0.1)


def test_backward_samples_have_the_requested_class(digits):
    sampler = ImageSampler(digits.x_train, digits.y_train, 10, digits.spec.augment, torch.device("cpu"))
    classes = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    images, labels = sampler.draw(classes, torch.Generator().manual_seed(1))
    assert torch.equal(labels, classes)
    assert images.shape == (500, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    # Draws are spread over the class, not one fixed image.
    idx = sampler.index.sample(torch.zeros(200, dtype=torch.long), torch.Generator().manual_seed(2))
    assert idx.unique().numel() > 50 and torch.all(digits.y_train[idx] == 0)


def test_sampler_refuses_a_training_set_missing_a_class(digits):
    keep = digits.y_train != 3
    with pytest.raises(ValueError, match=r"\[3\]"):
        ImageSampler(digits.x_train[keep], digits.y_train[keep], 10, None, torch.device("cpu"))


def test_augment_crop_and_flip_keep_shape_and_values():
    x = torch.rand(8, 3, 32, 32)
    out = Augment(crop_padding=4, flip=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    same = Augment(crop_padding=0, flip=False)(x)
    assert torch.equal(same, x)
    # A crop at offset (4, 4) is the identity: check the gather against slicing for one image.
    from agkd_bml.data.augment import random_crop

    g = torch.Generator().manual_seed(3)
    cropped = random_crop(x, 4, g)
    offsets = torch.randint(0, 9, (2, 8), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    i, j = offsets[0, 0].item(), offsets[1, 0].item()
    assert torch.equal(cropped[0], padded[0, :, i : i + 32, j : j + 32])


def test_batches_cover_the_data_once_in_seeded_order(digits):
    def labels(seed):
        return torch.cat([y for _,
                          y in iterate_batches(digits.x_train, digits.y_train, 100,
                                               device=torch.device("cpu"),
                                                        order=torch.Generator().manual_seed(seed))])
    a, b, c = labels(0), labels(0), labels(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, digits.y_train.sort().values)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_roundtrip_nhw_and_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 4
    ds = load_dataset(_write(tmp_path / "mnist_like.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8]))
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.spec.num_classes == 4 and ds.spec.default_eps == 0.3
    xc = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    ds = load_dataset(_write(tmp_path / "c.npz", x_train=xc, y_train=y, x_test=xc[:8], y_test=y[:8]))
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.spec.default_eps == pytest.approx(8 / 255)
    assert torch.equal(ds.x_train[0], torch.from_numpy(xc[0]).permute(2, 0, 1))


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, np.int64)}, "missing"),
        ({"x_train": np.zeros((4, 8, 8), np.float32)}, "uint8"),
        ({"y_train": np.zeros(3, np.int64)}, "labels"),
        ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)}, "empty"),
        ({"y_train": np.array([0, 1, -1, 1])}, "outside"),
        ({"x_train": np.zeros((4, 8, 9), np.uint8), "x_test": np.zeros((2, 8, 9), np.uint8)}, "square"),
        # labels 20-29 silently made a 30-class model
        ({"y_train": np.array([20, 21, 20, 21]), "y_test": np.array([20, 21])}, "no training images"),
    ],
)
def test_bad_npz_files_are_clear_user_errors(tmp_path, arrays, match):
    good = {"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.array([0, 1, 0, 1]),
            "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.array([0, 1])}
    good.update(arrays)
    if match == "missing":
        good = {k: v for k, v in good.items() if k in arrays}
    with pytest.raises(UserError, match=match):
        load_dataset(_write(tmp_path / "bad.npz", **good))


def test_missing_torchvision_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("svhn", data_dir=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="Tiny ImageNet"):
        load_dataset("tiny-imagenet", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet")


def test_shared_cifar10_loads_with_canonical_statistics(cifar_path):
    ds = load_dataset(f"npz:{cifar_path}")
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (1000, 3, 32, 32)
    assert ds.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.allclose(ds.spec.mean, [0.49139968, 0.48215841, 0.44653091], atol=1e-4)
    assert ds.spec.class_names[4] == "deer" and ds.spec.augment == Augment(crop_padding=4, flip=True)


def test_hold_out_is_class_balanced_disjoint_and_fixed(digits):
    rest, x, y = digits.hold_out(105, seed=0)
    assert x.shape[0] == 105 and rest.x_train.shape[0] == digits.x_train.shape[0] - 105
    counts = torch.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1
    flat = {bytes(img.numpy().tobytes()) for img in rest.x_train}
    assert sum(bytes(img.numpy().tobytes()) in flat for img in x) <= 2  # digits has a few duplicate images
    again = digits.hold_out(105, seed=0)[1]
    assert torch.equal(x, again) and not torch.equal(x, digits.hold_out(105, seed=1)[1])
