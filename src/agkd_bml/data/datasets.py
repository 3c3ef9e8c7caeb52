"""Dataset loaders. Every dataset ends up as uint8 NCHW tensors in memory plus a :class:`DataSpec`.

Keeping small datasets as uint8 tensors (CIFAR-10 is 150 MB) lets batching, augmentation and drawing backward
samples happen as tensor ops, with no per-image Python work. """

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agkd_bml.data.augment import Augment
from agkd_bml.errors import UserError, unknown_choice

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

#: eps at which an undefended small CNN on ``digits`` falls below 20% under PGD-20 (measured; see tests).
DIGITS_EPS = 0.1


@dataclass(kw_only=True, frozen=True)
class DataSpec:
    """What a model and a checkpoint need to know about a dataset (saved in every checkpoint)."""

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float
    class_names: tuple[str, ...]
    augment: Augment = field(default_factory=Augment)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        d = dict(d)
        d["augment"] = Augment(**d.get("augment", {}))
        for key in ("mean", "std", "class_names"):
            d[key] = tuple(d[key])
        return cls(**d)


@dataclass(kw_only=True)
class Dataset:
    """A train/test split held in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    spec: DataSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def limit_train(self, n: int | None, seed: int = 0) -> Dataset:
        """Keep ``n`` training images drawn by a fixed permutation (so every class stays represented)."""
        if n is None or n >= self.x_train.shape[0]:
            return self
        idx = torch.randperm(self.x_train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        return Dataset(spec=self.spec, x_train=self.x_train[idx], y_train=self.y_train[idx],
                       x_test=self.x_test, y_test=self.y_test)

    def hold_out(self, n: int, seed: int = 0) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
        """(the rest, held-out images, their labels): ``n`` training images, as many of each class as can be.

        Model selection (best checkpoint, early stopping) must never look at the test set; these images
        take its place. The draw depends on ``seed`` only, so runs of one dataset share their held-out set.
        """
        counts = torch.bincount(self.y_train, minlength=self.spec.num_classes)
        if not 0 < n < self.x_train.shape[0]:
            raise UserError(f"--val-split must be between 1 and {self.x_train.shape[0] - 1} (the training "
                            f"images); got {n}")
        gen = torch.Generator().manual_seed(seed)
        per_class = [(self.y_train == c).nonzero().squeeze(1) for c in range(self.spec.num_classes)]
        per_class = [idx[torch.randperm(idx.numel(), generator=gen)] for idx in per_class]
        k = self.spec.num_classes
        # balanced; a small class gives all
        take = [min(n // k + (c < n % k), int(counts[c])) for c in range(k)]
        if sum(take) < n:
            raise UserError(f"--val-split {n}: the smallest classes have too few training images for a "
                            "balanced split")
        held = torch.cat([idx[:k] for idx, k in zip(per_class, take, strict=True)]).sort().values
        keep = torch.ones(self.x_train.shape[0], dtype=torch.bool)
        keep[held] = False
        rest = Dataset(spec=self.spec, x_train=self.x_train[keep], y_train=self.y_train[keep],
                       x_test=self.x_test, y_test=self.y_test)
        return rest, self.x_train[held], self.y_train[held]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images in [0, 1], in chunks to bound memory."""
    c = x.shape[1]
    s = np.zeros(c)
    s2 = np.zeros(c)
    for start in range(0, x.shape[0], 4096):
        chunk = x[start : start + 4096].astype(np.float64) / 255.0
        s += chunk.sum(axis=(0, 2, 3))
        s2 += (chunk**2).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise UserError(f"{what} must be uint8 images of shape (N, H, W) "
                    f"or (N, H, W, C) with C in 1 or 3; got {x.shape}")


def from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    default_eps: float | None = None,
    augment: Augment,
    class_names: tuple[str, ...] | None = None,
    num_classes: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Dataset:
    """Validate numpy arrays (uint8 NHW / NHWC images, integer labels) and wrap them as a :class:`Dataset`.

    ``default_eps``: the dataset's L-inf budget; ``None``: the convention of its
    image shape (:func:`image_linf_eps`).
    """
    xs = {}
    ys = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dtype != np.uint8:
            raise UserError(f"{name}: x_{split} must be uint8 images in 0..255; got dtype {x.dtype}")
        if not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{name}: y_{split} must hold integer class labels; got dtype {y.dtype}")
        if y.ndim != 1:
            raise UserError(f"{name}: y_{split} must be one-dimensional; got shape {y.shape}")
        x = _to_nchw(x, f"{name}: x_{split}")
        if x.shape[0] != y.shape[0]:
            raise UserError(f"{name}: x_{split} has {x.shape[0]} images but y_{split} has {y.shape[0]} "
                            "labels")
        if x.shape[0] == 0:
            raise UserError(f"{name}: the {split} split is empty")
        xs[split] = x
        ys[split] = y.astype(np.int64)
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise UserError(f"{name}: train images {xs['train'].shape[1:]} and test images "
                        f"{xs['test'].shape[1:]} differ in shape")
    c, h, w = xs["train"].shape[1:]
    if h != w or h == 0:
        raise UserError(f"{name}: images must be square and non-empty; got {h}x{w}")
    k = num_classes if num_classes is not None else int(max(ys["train"].max(), ys["test"].max())) + 1
    for split in ("train", "test"):
        lo, hi = int(ys[split].min()), int(ys[split].max())
        if lo < 0 or hi >= k:
            raise UserError(f"{name}: y_{split} has labels in [{lo}, {hi}], outside 0..{k - 1}")
    if k < 2:
        raise UserError(f"{name}: needs at least 2 classes; found {k}")
    if num_classes is None:  # classes inferred from the labels: each of 0..K-1 must have training images
        absent = sorted(set(range(k)) - set(np.unique(ys["train"]).tolist()))
        if absent:
            shown = ", ".join(map(str, absent[:8])) + (", ..." if len(absent) > 8 else "")
            raise UserError(f"{name}: labels must be the class indices 0..K-1, but {len(absent)} of "
                            f"0..{k - 1} have no training images ({shown}); renumber them, or give the "
                            "classes as a class_names array")
    if mean is None or std is None:
        mean, std = _channel_stats(xs["train"])
    spec = DataSpec(
        name=name,
        num_classes=k,
        channels=int(c),
        size=int(h),
        mean=tuple(mean),
        std=tuple(std),
        default_eps=default_eps if default_eps is not None else image_linf_eps(int(c), int(h)),
        class_names=tuple(class_names) if class_names else tuple(str(i) for i in range(k)),
        augment=augment,
    )
    return Dataset(
        spec=spec,
        x_train=torch.from_numpy(xs["train"]),
        y_train=torch.from_numpy(ys["train"]),
        x_test=torch.from_numpy(xs["test"]),
        y_test=torch.from_numpy(ys["test"]),
    )


def load_digits(size: int = 16) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 real images), upsampled to ``size`` and split 75/25.

    Upsampling to 16x16 gives a 4x4 last feature map after two stride-2 stages, which AGKD needs. The split is
    stratified with a fixed seed, so every machine gets the same train and test images. """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = (images.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return from_arrays(
        "digits", x_tr, y_tr, x_te, y_te,
        default_eps=DIGITS_EPS, augment=Augment(crop_padding=1), num_classes=10,
    )


def image_linf_eps(channels: int, size: int) -> float:
    """The field's L-inf budget for images of this shape when no dataset says: 0.3 on MNIST-like images
    (1x28x28), 8/255 otherwise (CIFAR-10, SVHN, Tiny ImageNet)."""
    return 0.3 if (channels, size) == (1, 28) else 8 / 255


def load_npz(path: str) -> Dataset:
    """Any ``.npz`` with ``x_train, y_train, x_test, y_test`` (uint8 NHW or NHWC, integer labels).

    eps defaults to 0.3 for MNIST-like data (1 channel, 28x28) and 8/255 otherwise; CIFAR-10 class names are
    used when the file name says ``cifar10`` and has 10 classes, or the file's own ``class_names``. """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"npz file {path!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}; need x_train, y_train, "
                                "x_test, y_test")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            names = tuple(str(s) for s in f["class_names"]) if "class_names" in f.files else None
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from exc
    x = arrays["x_train"]
    if names is None and "cifar10" in p.stem.lower() and "cifar100" not in p.stem.lower():
        names = CIFAR10_CLASSES
    is_cifar_like = x.ndim == 4 and x.shape[1] in (32, 64) and x.shape[-1] == 3
    return from_arrays(
        f"npz:{path}",
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
        augment=Augment(crop_padding=4, flip=True) if is_cifar_like else Augment(),
        class_names=names,
        num_classes=len(names) if names else None,
    )


def _torchvision(name: str, data_dir: str, download: bool) -> Dataset:
    """CIFAR-10/100, SVHN, MNIST and Fashion-MNIST through torchvision, converted to uint8 NCHW."""
    import torchvision.datasets as tvd

    root = Path(data_dir)
    if not download and not root.is_dir():
        raise UserError(f"data directory {data_dir!r} does not exist; pass --data-dir DIR or --download")
    if download:
        print(f"{name}: files in {root} (downloaded there by torchvision if missing)", file=sys.stderr)
    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            tr, te = (cls(str(root), train=t, download=download) for t in (True, False))
            arrays = (tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets))
            names = tuple(tr.classes)
            eps, aug = 8 / 255, Augment(crop_padding=4, flip=True)
            stats = (CIFAR_MEAN, CIFAR_STD) if name == "cifar10" else (None, None)
        elif name == "svhn":
            tr, te = (tvd.SVHN(str(root), split=s, download=download) for s in ("train", "test"))
            arrays = (tr.data.transpose(0, 2, 3, 1), tr.labels, te.data.transpose(0, 2, 3, 1), te.labels)
            names = tuple(str(i) for i in range(10))
            eps, aug, stats = 8 / 255, Augment(crop_padding=4, flip=False), (None, None)
        else:
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            tr, te = (cls(str(root), train=t, download=download) for t in (True, False))
            arrays = (tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy())
            names = tuple(tr.classes)
            # 0.3 for MNIST (Madry et al.); 0.1 is the usual budget for Fashion-MNIST.
            eps, aug, stats = (0.3 if name == "mnist" else 0.1), Augment(), (None, None)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise UserError(
            f"{name} files not found under {data_dir!r} ({exc}); pass --download to fetch them, "
            f"or --data-dir pointing at an existing copy"
        ) from exc
    return from_arrays(
        name, *arrays, default_eps=eps, augment=aug, class_names=names,
        num_classes=len(names), mean=stats[0], std=stats[1],
    )


def load_tiny_imagenet(data_dir: str, download: bool) -> Dataset:
    """Tiny ImageNet from its standard folder layout: ``wnids.txt``, ``train/<wnid>/images``, ``val``."""
    from PIL import Image

    root = Path(data_dir)
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    if not (root / "wnids.txt").is_file():
        hint = " (it has no download mirror here)" if download else ""
        raise UserError(
            f"Tiny ImageNet not found under {data_dir!r}{hint}: expected tiny-imagenet-200/wnids.txt, "
            "train/ and val/ (unzip tiny-imagenet-200.zip into --data-dir)"
        )
    wnids = (root / "wnids.txt").read_text().split()
    label = {w: i for i, w in enumerate(wnids)}

    def read(paths: list[Path]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])

    train = [(p, label[w]) for w in wnids for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]
    val_lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    val = [(root / "val" / "images" / ln.split("\t")[0], label[ln.split("\t")[1]]) for ln in val_lines if ln]
    return from_arrays(
        "tiny-imagenet",
        read([p for p, _ in train]), np.array([c for _, c in train]),
        read([p for p, _ in val]), np.array([c for _, c in val]),
        default_eps=8 / 255, augment=Augment(crop_padding=4, flip=True),
        class_names=tuple(wnids), num_classes=len(wnids),
    )


#: Dataset names accepted by ``--dataset`` (plus ``npz:PATH``), each with its loader.
DATASETS: dict[str, Callable[[str, bool], Dataset]] = {
    "digits": lambda data_dir, download: load_digits(),
    **{n: functools.partial(_torchvision, n)
       for n in ("cifar10", "cifar100", "svhn", "mnist", "fashion-mnist")},
    "tiny-imagenet": load_tiny_imagenet,
}


#: the environment variable that moves the default data folder (:func:`default_data_dir`)
DATA_DIR_ENV = "AGKD_BML_DATA"


def default_data_dir() -> str:
    """Where datasets by name live unless ``--data-dir`` says otherwise: ``$AGKD_BML_DATA``, else a per-user
    cache (``$XDG_CACHE_HOME/agkd-bml/data``, ``~/.cache/agkd-bml/data``), so
    one download serves every project."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "agkd-bml" / "data")


def load_dataset(name: str, *, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Load a dataset by name (see :data:`DATASETS`; files in ``data_dir``, by default
    :func:`default_data_dir`, fetched there by torchvision with ``download``) or ``npz:PATH``."""
    if name.startswith("npz:"):
        return load_npz(name[4:])
    if name not in DATASETS:
        raise unknown_choice("dataset", name, [*DATASETS, "npz:PATH"])
    return DATASETS[name](data_dir or default_data_dir(), download)

