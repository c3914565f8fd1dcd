"""Datasets: Fashion-MNIST, scikit-learn digits, CIFAR-10 and ImageFolder, and the built-in task
that trains and scores image classifiers on them (`ImageClassification`, the task seam's
default: `trainers.tasks`). `load_data` loads any task's data.

Every dataset is split deterministically: validation is carved from the training set with a
seeded permutation, the test set is never touched by that carving. Small image sets are held
as uint8 tensors in memory and normalised on the fly, so a loader costs no decoding.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from prunetune.errors import DatasetError, DatasetNotFoundError

from .settings import DataConfig
from .tasks import (
    DEFAULT_TASK,
    DataBundle,
    DatasetShape,
    TaskBase,
    get_task,
    register_task,
    task_names,
)

__all__ = [
    "DataConfig",
    "DataBundle",
    "DatasetNotFoundError",
    "TensorImageDataset",
    "DatasetShape",
    "IMAGE_CLASSIFICATION",
    "ImageClassification",
    "check_data_present",
    "dataset_shape",
    "get_task",
    "load_data",
    "register_task",
    "task_names",
    "FASHION_MNIST_SYSTEM_DIR",
]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Per-dataset channel statistics of the training split (on pixel values in [0, 1]).
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3051,), (0.3789,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class TensorImageDataset(Dataset):
    """Images held as an `N x C x H x W` uint8 tensor plus `N` int64 labels."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        augment: bool = False,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be an N x C x H x W uint8 tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float().div_(255.0)
        if self.augment:
            if self.pad:
                h, w = x.shape[-2:]
                x = torch.nn.functional.pad(x, (self.pad,) * 4)
                i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
                x = x[:, i : i + h, j : j + w]
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[index]

    def with_augment(self, augment: bool) -> TensorImageDataset:
        return TensorImageDataset(self.images, self.labels, tuple(self.mean.flatten().tolist()),
                                  tuple(self.std.flatten().tolist()), augment=augment,
                                  pad=self.pad, flip=self.flip)


# ---------------------------------------------------------------------------------------------
# Splitting


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def _take(indices: torch.Tensor, limit: int | None) -> torch.Tensor:
    return indices if limit is None else indices[:limit]


def _bundle_from_tensors(name: str, cfg: DataConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                         test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                         pad: int, flip: bool) -> DataBundle:
    mean, std = _STATS[name]
    train_idx, val_idx = _split_indices(len(train_x), cfg.val_fraction, cfg.split_seed)
    train_idx = _take(train_idx, cfg.train_subset)
    val_idx = _take(val_idx, cfg.val_subset)
    test_idx = _take(torch.arange(len(test_x)), cfg.test_subset)
    augment = cfg.augment and (pad > 0 or flip)
    train = TensorImageDataset(train_x[train_idx], train_y[train_idx], mean, std,
                               augment=augment, pad=pad, flip=flip)
    val = TensorImageDataset(train_x[val_idx], train_y[val_idx], mean, std)
    test = TensorImageDataset(test_x[test_idx], test_y[test_idx], mean, std)
    return DataBundle(name=name, train=train, val=val, test=test, num_classes=num_classes,
                      in_channels=train_x.shape[1], image_size=tuple(train_x.shape[-2:]),
                      config=cfg,
                      split_indices={"train": train_idx, "val": val_idx, "test": test_idx})


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    tensor = torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8)
    return tensor.view(*shape)


def _fmnist_candidates(root: str | None) -> list[Path]:
    # A data.root the user gave is the only place looked in: a typo in it must not be covered
    # up by another copy of the dataset found elsewhere.
    if root is not None:
        r = Path(root).expanduser()
        return [r, r / "fashion-mnist", r / "FashionMNIST" / "raw"]
    candidates: list[Path] = []
    env = os.environ.get("PRUNETUNE_DATA")
    if env:
        candidates += [Path(env) / "fashion-mnist", Path(env), Path(env) / "FashionMNIST" / "raw"]
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    return candidates


def _find_fmnist(root: str | None) -> Path | None:
    for folder in _fmnist_candidates(root):
        names = _FMNIST_FILES.values()
        if all((folder / f).is_file() or (folder / f[:-3]).is_file() for f in names):
            return folder
    return None


def _load_fashion_mnist(cfg: DataConfig) -> DataBundle:
    folder = _find_fmnist(cfg.root)
    if folder is None and cfg.allow_download:
        import torchvision

        target = Path(cfg.root or os.environ.get("PRUNETUNE_DATA") or "~/.cache/prunetune/data")
        torchvision.datasets.FashionMNIST(str(target.expanduser()), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(target.expanduser()), train=False, download=True)
        folder = _find_fmnist(str(target.expanduser()))
    if folder is None and cfg.root is not None:
        root = Path(cfg.root).expanduser()
        state = "does not exist" if not root.exists() else (
            f"holds none of the four idx files ({', '.join(_FMNIST_FILES.values())}), nor "
            "its fashion-mnist/ or FashionMNIST/raw/ sub-folder")
        raise DatasetNotFoundError(
            f"data.root {root} {state}: point data.root at the folder that holds the "
            "Fashion-MNIST idx files, remove data.root to use $PRUNETUNE_DATA or "
            f"{FASHION_MNIST_SYSTEM_DIR}, or set data.allow_download: true")
    if folder is None:
        looked = "\n  ".join(str(p) for p in _fmnist_candidates(cfg.root))
        raise DatasetNotFoundError(
            "Fashion-MNIST not found. Looked for the four idx files "
            f"({', '.join(_FMNIST_FILES.values())}) in:\n  {looked}\n"
            "Get it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), point "
            "data.root or $PRUNETUNE_DATA at a folder holding the files, or set "
            "data.allow_download: true to let torchvision download it."
        )

    def read(key: str) -> torch.Tensor:
        path = folder / _FMNIST_FILES[key]
        return _read_idx(path if path.is_file() else path.with_suffix(""))

    train_x = read("train_images").unsqueeze(1)
    test_x = read("test_images").unsqueeze(1)
    return _bundle_from_tensors("fashion-mnist", cfg, train_x, read("train_labels"), test_x,
                                read("test_labels"), num_classes=10, pad=2, flip=True)


# ---------------------------------------------------------------------------------------------
# scikit-learn digits: 1,797 8x8 images, always installed with scikit-learn.


def _load_digits(cfg: DataConfig) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    # digits has no official test split: a fixed 20% (seed 0, independent of split_seed) is the
    # test set, so changing split_seed re-carves validation but never touches test.
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = len(images) // 5
    test_i, train_i = perm[:n_test], perm[n_test:]
    return _bundle_from_tensors("digits", cfg, images[train_i], labels[train_i], images[test_i],
                                labels[test_i], num_classes=10, pad=1, flip=False)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (torchvision's python format) and ImageFolder


def _cifar10_root(cfg: DataConfig) -> Path:
    # A data.root the user gave is the only place looked in (as for Fashion-MNIST).
    roots = [Path(cfg.root).expanduser()] if cfg.root else []
    if not roots and os.environ.get("PRUNETUNE_DATA"):
        roots.append(Path(os.environ["PRUNETUNE_DATA"]))
    root = next((r for r in roots if (r / "cifar-10-batches-py").is_dir()), None)
    if root is None and not cfg.allow_download:
        looked = ", ".join(str(r / "cifar-10-batches-py") for r in roots) or "(no data.root given)"
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: looked for cifar-10-batches-py in {looked}. Set data.root to "
            "the folder that holds 'cifar-10-batches-py' (torchvision's format), or set "
            "data.allow_download: true."
        )
    return root or (roots[0] if roots else Path("~/.cache/prunetune/data").expanduser())


def _load_cifar10(cfg: DataConfig) -> DataBundle:
    import torchvision

    root = _cifar10_root(cfg)
    train = torchvision.datasets.CIFAR10(str(root), train=True, download=cfg.allow_download)
    test = torchvision.datasets.CIFAR10(str(root), train=False, download=cfg.allow_download)

    def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    (train_x, train_y), (test_x, test_y) = to_tensors(train), to_tensors(test)
    return _bundle_from_tensors("cifar10", cfg, train_x, train_y, test_x, test_y,
                                num_classes=10, pad=4, flip=True)


def _check_imagefolder_root(cfg: DataConfig) -> None:
    if cfg.root is None or not Path(cfg.root).is_dir():
        raise DatasetNotFoundError(
            f"imagefolder needs data.root to be a folder of class sub-folders, got {cfg.root!r}. "
            "Use ROOT/train and ROOT/test (or ROOT/val), or one folder that is split for you."
        )


def _load_imagefolder(cfg: DataConfig) -> DataBundle:
    import torchvision
    from torchvision import transforms

    _check_imagefolder_root(cfg)
    root = Path(cfg.root)
    mean, std = _STATS["imagefolder"]
    size = cfg.image_size
    base = [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    aug = [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip()]
    train_tf = transforms.Compose(base[:1] + (aug if cfg.augment else []) + base[1:])
    eval_tf = transforms.Compose(base)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() else root
    train_full = torchvision.datasets.ImageFolder(str(train_dir), transform=train_tf)
    eval_full = torchvision.datasets.ImageFolder(str(train_dir), transform=eval_tf)
    n = len(train_full)
    if test_dir is None:
        # No test folder: a fixed 20% of the images (seed 0) is the test split.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        test_idx, rest = perm[: n // 5], perm[n // 5 :]
        test_ds: Dataset = Subset(eval_full, _take(test_idx, cfg.test_subset).tolist())
    else:
        rest = torch.arange(n)
        test_full = torchvision.datasets.ImageFolder(str(test_dir), transform=eval_tf)
        test_ds = Subset(test_full, _take(torch.arange(len(test_full)), cfg.test_subset).tolist())
    perm = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(cfg.split_seed))]
    n_val = int(round(len(perm) * cfg.val_fraction))
    train_idx = _take(perm[n_val:], cfg.train_subset)
    val_idx = _take(perm[:n_val], cfg.val_subset)
    return DataBundle(name="imagefolder", train=Subset(train_full, train_idx.tolist()),
                      val=Subset(eval_full, val_idx.tolist()), test=test_ds,
                      num_classes=len(train_full.classes), in_channels=3,
                      image_size=(size, size), config=cfg,
                      split_indices={"train": train_idx, "val": val_idx, "test": None})


_LOADERS = {
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "cifar10": _load_cifar10,
    "imagefolder": _load_imagefolder,
}


_SHAPES = {"fashion-mnist": DatasetShape(1, (28, 28), 10), "digits": DatasetShape(1, (8, 8), 10),
           "cifar10": DatasetShape(3, (32, 32), 10)}


def _image_shape(cfg: DataConfig) -> DatasetShape:
    if cfg.name in _SHAPES:
        return _SHAPES[cfg.name]
    root = Path(cfg.root or ".").expanduser()
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = sum(1 for d in train_dir.iterdir() if d.is_dir()) if train_dir.is_dir() else 0
    return DatasetShape(3, (cfg.image_size, cfg.image_size), classes)


def _check_images_present(cfg: DataConfig) -> None:
    if cfg.name == "fashion-mnist" and not cfg.allow_download and _find_fmnist(cfg.root) is None:
        _load_fashion_mnist(cfg)  # raises, naming the places looked in
    elif cfg.name == "cifar10":
        _cifar10_root(cfg)
    elif cfg.name == "imagefolder":
        _check_imagefolder_root(cfg)


class ImageClassification(TaskBase):
    """The built-in task: `data.name`'s images, `logits = model(x)`, cross-entropy (label
    smoothing in training), KL distillation, top-1 accuracy, BatchNorm calibration on the
    first training images without augmentation."""

    name = DEFAULT_TASK
    metric_name = "top-1 accuracy"
    sample_noun = "image"
    source_noun = "dataset"

    def shape(self, cfg: DataConfig) -> DatasetShape:
        return _image_shape(cfg)

    def check_data(self, cfg: DataConfig) -> None:
        _check_images_present(cfg)

    def load_data(self, cfg: DataConfig) -> DataBundle:
        return _LOADERS[cfg.name](cfg)


IMAGE_CLASSIFICATION = register_task(ImageClassification())


def dataset_shape(cfg: DataConfig) -> DatasetShape:
    """What a model must take and give for the config's data, from the config alone (an image
    folder: its class sub-folders are counted), so a model that does not fit is refused before
    any data is read or any training starts. Asks the config's task (a bad `data.task` is a
    ConfigError here)."""
    return get_task(cfg.task).shape(cfg)


def check_data_present(cfg: DataConfig) -> None:
    """The data's files are where the config says (`DatasetNotFoundError` otherwise), found
    without reading them: a search checks this before it creates anything. A bad `data.task`
    is a ConfigError here."""
    get_task(cfg.task).check_data(cfg)


def load_data(cfg: DataConfig | None = None) -> DataBundle:
    """Load the config's data and split it into train / val / test, by its task (`data.task`;
    image classification: `data.name`'s images).

    Fashion-MNIST is looked for in `cfg.root`, then `$PRUNETUNE_DATA`, then
    `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`); it is downloaded by
    torchvision only when `cfg.allow_download` is true. Raises `DatasetNotFoundError` naming the
    places searched when the files are missing.
    """
    cfg = cfg or DataConfig()
    return get_task(cfg.task).load_data(cfg)
