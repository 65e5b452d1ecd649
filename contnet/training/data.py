"""Data for the main job, with no network access.

- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 grey images, 10 classes),
  shipped inside scikit-learn itself. A fixed stratified split: 1,438 train, 359 test.
- ``cifar10``: CIFAR-10 from a local folder in its binary distribution format
  (``data_batch_1.bin`` ... ``data_batch_5.bin``, ``test_batch.bin``: records of one label
  byte and 3,072 image bytes, channel-major 32x32), parsed with numpy (no pickle).
- ``cifar100``: CIFAR-100 likewise (``train.bin``, ``test.bin``: a coarse and a fine label
  byte per record; the fine labels are the classes).

Batches come from :class:`Loader`, which shuffles with its own ``torch.Generator`` so a
run is reproducible and resumable (its state is saved in checkpoints).
"""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Dataset",
    "Loader",
    "load",
    "load_digits",
    "load_cifar10",
    "load_cifar100",
    "read_cifar100_file",
    "read_cifar10_file",
    "DATASETS",
]

DATASETS = ("digits", "cifar10", "cifar100")
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
_SPLIT_SEED = 0x5EED  # the validation split's fixed order


@dataclass
class Dataset:
    """Train and test tensors: images ``(N, C, H, W)`` float32, labels ``(N,)`` int64;
    ``x_val``/``y_val``: a validation split held out of the training images, if made
    (:meth:`with_validation`)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: bool = False
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    #: the standardisation of the images: ``x = (pixels - pixel_mean) / pixel_std``, pixels
    #: in ``[0, 1]`` (per channel, ``(1, C, 1, 1)``); None: the images are pixels already
    pixel_mean: torch.Tensor | None = None
    pixel_std: torch.Tensor | None = None

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Images of this data set as pixels in ``[0, 1]`` (undoing the standardisation)."""
        if self.pixel_mean is None:
            return x
        return x * self.pixel_std.to(x.device) + self.pixel_mean.to(x.device)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in ``[0, 1]`` standardised as this data set's images are."""
        if self.pixel_mean is None:
            return pixels
        return (pixels - self.pixel_mean.to(pixels.device)) / self.pixel_std.to(pixels.device)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    def describe(self) -> str:
        c, h, w = self.x_train.shape[1:]
        val = f" / {len(self.x_val)} validation" if self.x_val is not None else ""
        return (
            f"{self.name}: {len(self.x_train)} train{val} / {len(self.x_test)} test images, "
            f"{c}x{h}x{w}, {self.num_classes} classes"
        )

    def with_validation(self, fraction: float) -> Dataset:
        """This data set with ``round(fraction * n_c)`` training images of every class
        ``c`` moved to a validation split (``x_val``, ``y_val``), the rest kept for
        training. The split depends on the data and ``fraction`` only: each class's images
        are taken in one fixed shuffled order, so every run makes the same split, and a
        smaller fraction's split lies inside a larger one's. ``fraction = 0``: no split."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"fraction must be a number in [0, 1), got {fraction!r}")
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        if self.x_val is not None:
            raise ValueError("this data set already has a validation split")
        if fraction == 0:
            return self
        gen = torch.Generator().manual_seed(_SPLIT_SEED)
        order = torch.randperm(len(self.y_train), generator=gen)
        val = torch.zeros(len(self.y_train), dtype=torch.bool)
        for c in torch.unique(self.y_train).tolist():
            mine = order[self.y_train[order] == c]
            take = round(fraction * len(mine))
            if take >= len(mine):
                raise ValueError(
                    f"fraction {fraction} leaves class {c} no training image (it has "
                    f"{len(mine)}): hold out less for validation"
                )
            val[mine[:take]] = True
        return dataclasses.replace(
            self,
            x_train=self.x_train[~val],
            y_train=self.y_train[~val],
            x_val=self.x_train[val],
            y_val=self.y_train[val],
        )


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor):
    """Both sets standardised with the training images' per-channel mean and std, and
    those (for :meth:`Dataset.to_pixels`)."""
    mean = x_train.mean((0, 2, 3), keepdim=True)
    std = x_train.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std, {"pixel_mean": mean, "pixel_std": std}


def load_digits(test_size: int = 360, seed: int = 0) -> Dataset:
    """scikit-learn's digits, split with a fixed stratified shuffle."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'contnet[cli]'"
        ) from e
    d = sk_load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(test_size * len(idx) / len(y))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    x_train, x_test, stats = _standardise(x[tr], x[te])
    return Dataset("digits", x_train, y[tr], x_test, y[te], 10, **stats)


def _read_records(path, label_bytes: int, classes: int, what: str):
    """``(images uint8 (N, 3, 32, 32), labels uint8 (N,))`` of a CIFAR binary file whose
    records are ``label_bytes`` label bytes (the last one the class) and 3,072 image bytes."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} is missing")
    record = label_bytes + 3 * 32 * 32
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{path} is not a {what} binary batch: {raw.size} bytes is not a positive multiple "
            f"of the {record}-byte record ({label_bytes} label byte(s) + 3072 image bytes)"
        )
    rec = raw.reshape(-1, record)
    labels = rec[:, label_bytes - 1]
    if labels.max() >= classes:
        raise ValueError(
            f"{path} is not a {what} binary batch: label {int(labels.max())} is not in "
            f"0..{classes - 1}"
        )
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def read_cifar10_file(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file: ``(images uint8 (N, 3, 32, 32), labels uint8 (N,))``."""
    return _read_records(path, 1, 10, "CIFAR-10")


def read_cifar100_file(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-100 binary file (``train.bin``, ``test.bin``: a coarse and a fine label
    byte per record): ``(images uint8 (N, 3, 32, 32), fine labels uint8 (N,))``."""
    return _read_records(path, 2, 100, "CIFAR-100")


def _cifar_root(data_dir, name: str, folder: str, files) -> pathlib.Path:
    if data_dir is None:
        raise ValueError(f"--data {name} needs --data-dir: the folder of its binary files")
    root = pathlib.Path(data_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"data dir {root} is a file, not the folder of {name}'s files")
    if not root.is_dir():
        raise FileNotFoundError(f"data dir {root} does not exist")
    if not (root / files[-1]).is_file() and (root / folder).is_dir():
        root = root / folder
    missing = [n for n in files if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a {name} binary folder: missing {', '.join(missing)}"
        )
    return root


def _cifar(name, train_parts, test_part, classes) -> Dataset:
    x_train = torch.from_numpy(np.concatenate([p[0] for p in train_parts])).float() / 255.0
    y_train = torch.from_numpy(np.concatenate([p[1] for p in train_parts])).long()
    x_test = torch.from_numpy(test_part[0]).float() / 255.0
    x_train, x_test, stats = _standardise(x_train, x_test)
    y_test = torch.from_numpy(test_part[1]).long()
    return Dataset(name, x_train, y_train, x_test, y_test, classes, augment=True, **stats)


def load_cifar100(data_dir) -> Dataset:
    """CIFAR-100 (fine labels) from ``data_dir`` (the ``cifar-100-binary`` folder, or its
    parent)."""
    root = _cifar_root(data_dir, "cifar100", "cifar-100-binary", ("train.bin", "test.bin"))
    return _cifar(
        "cifar100",
        [read_cifar100_file(root / "train.bin")],
        read_cifar100_file(root / "test.bin"),
        100,
    )


def load_cifar10(data_dir) -> Dataset:
    """CIFAR-10 from ``data_dir`` (the ``cifar-10-batches-bin`` folder, or its parent)."""
    root = _cifar_root(data_dir, "cifar10", "cifar-10-batches-bin", CIFAR_TRAIN + (CIFAR_TEST,))
    parts = [read_cifar10_file(root / n) for n in CIFAR_TRAIN]
    return _cifar("cifar10", parts, read_cifar10_file(root / CIFAR_TEST), 10)


def load(name: str, data_dir=None, seed: int = 0) -> Dataset:
    if name == "digits":
        return load_digits(seed=seed)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "cifar100":
        return load_cifar100(data_dir)
    raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")


class Loader:
    """Mini-batches of ``(x, y)``, shuffled by its own generator (state in checkpoints);
    with ``augment``, random 4-pixel-padded crops and horizontal flips (CIFAR-style)."""

    def __init__(
        self, x, y, batch_size: int, *, shuffle: bool, augment: bool = False, seed: int = 0
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.augment = shuffle, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flip = torch.rand(n, generator=self.generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        rows = torch.randint(0, 9, (n, 1), generator=self.generator) + torch.arange(h)
        cols = torch.randint(0, 9, (n, 1), generator=self.generator) + torch.arange(w)
        n_idx = torch.arange(n)[:, None, None, None]
        c_idx = torch.arange(c)[None, :, None, None]
        return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]

    def __iter__(self):
        order = (
            torch.randperm(len(self.x), generator=self.generator)
            if self.shuffle
            else torch.arange(len(self.x))
        )
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.x[idx]
            yield (self._augment(x) if self.augment else x), self.y[idx]
