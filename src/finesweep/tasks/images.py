"""Labelled images on disk: finding them, checking every file up front, and decoding them once into uint8 arrays.

Two layouts, the ones vision users keep:

- a folder with one sub-folder per class (torchvision's / timm's ``ImageFolder``, Hugging Face ``imagefolder``),
  or with ``train/`` and ``val/`` (``validation/``, ``valid/``, ``dev/``) and optionally ``test/`` sub-folders
  of that shape, used as the splits (without ``test/``, ``data.test_fraction`` of ``train/`` is held out);
- a table (CSV, TSV, JSONL, Parquet) with an image-path column (``data.image_column``, paths relative to the
  table's folder, which they may not leave) and a label column.

JPEG, PNG, WebP and BMP files; grayscale, palette, CMYK and RGBA images are converted to RGB (alpha dropped).
``find`` opens every file's header (and checks that JPEG, PNG, WebP and BMP files are not cut short), so a
corrupt file is one line before any trial starts; ``decode`` resizes each image once, on the driver, in threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from finesweep.config import DataConfig
from finesweep.errors import DataError, one_line
from finesweep.tasks.data import read_table, split_indices, subsample

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""Image files a folder layout picks up (any case); other files are ignored."""

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "valid", "dev"), "test": ("test",)}
"""Sub-folder names taken as given splits."""

THREADS = min(8, (os.cpu_count() or 1) * 2)
"""Threads that open and decode images (Pillow releases the GIL while it decodes)."""


@dataclass(frozen=True)
class Resize:
    """How an image becomes the model's input: the preprocessing of the model's own image processor.

    Attributes:
        size: pixels per side of the (square) input.
        crop_pct: None: squash the whole image to ``size`` x ``size`` (ViT's processors); else resize the
            shorter side to ``size / crop_pct`` and crop the centre ``size`` x ``size`` (ResNet, ConvNeXt, timm).
    """

    size: int
    crop_pct: Optional[float] = None

    def apply(self, image: PILImage) -> np.ndarray:
        """The image as a (3, size, size) uint8 array."""
        from PIL import Image

        image = _rgb(image)
        if self.crop_pct is None:
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        else:
            scale = self.size / self.crop_pct / min(image.size)
            width, height = (max(self.size, round(side * scale)) for side in image.size)
            image = image.resize((width, height), Image.Resampling.BICUBIC)
            left, top = (width - self.size) // 2, (height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageRows:
    """The images of a data set, their labels, and the rows of each split (before anything is decoded)."""

    paths: Tuple[Path, ...]
    labels: np.ndarray
    label_names: Tuple[str, ...]
    splits: Tuple[np.ndarray, np.ndarray, np.ndarray]
    given: bool
    """Whether the splits are the data's own ``train/``, ``val/``, ``test/`` folders."""


def find(data: DataConfig) -> ImageRows:
    """Every image of the data, checked, with its label and split.

    Raises:
        DataError: no such folder or file, an empty or lone class, a path leaving the data folder, a missing,
            unreadable or truncated image, a class with no images in a split.
    """
    root = Path(data.path)
    if root.is_dir():
        return _from_folders(root, data)
    if root.is_file():
        return _from_table(root, data)
    raise DataError(f"data.path: no such folder or file, got {data.path}. Point data.path at a folder of images "
                    "(one sub-folder per class) or a table with an image-path column.")


def decode(paths: Sequence[Path], resize: Resize, out: np.ndarray) -> None:
    """Decode and resize every image into ``out`` (one (3, size, size) uint8 row each), in threads.

    Raises:
        DataError: an image that cannot be decoded (names the file).
    """
    def one(index: int) -> None:
        out[index] = _decode(paths[index], resize)

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for _ in pool.map(one, range(len(paths))):
            pass


def describe_layout(rows: ImageRows) -> str:
    """How the splits were made, for the terminal."""
    return "splits as given (train/val/test folders)" if rows.given else "stratified split"


# --- layouts -----------------------------------------------------------------------------------------------

def _from_folders(root: Path, data: DataConfig) -> ImageRows:
    splits = _split_folders(root)
    if not splits:
        items, classes = _image_folder(root)
        return _split_rows(items, classes, data)
    if "train" not in splits or "val" not in splits:
        given = ", ".join(sorted(splits))
        raise DataError(f"data.path: a folder of split sub-folders needs train/ and val/, got {given} in {root}. "
                        "Add the missing split folder, or use one sub-folder per class and let finesweep split.")
    parts = {name: _image_folder(folder) for name, folder in splits.items()}
    names = tuple(sorted(set().union(*(set(found) for _, found in parts.values()))))
    for split, (_, found) in parts.items():
        missing = sorted(set(names) - set(found))
        if missing:
            raise DataError(f"data.path: class {missing[0]!r} has no images in {split}/ of {root}, got classes "
                            f"{', '.join(found)} there. Add images of every class to every split folder.")
    lookup = {name: i for i, name in enumerate(names)}
    paths: List[Path] = []
    labels: List[int] = []
    index: Dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        split_paths, split_names = parts.get(split, ([], ()))
        start = len(paths)
        paths += [p for p, _ in split_paths]
        labels += [lookup[split_names[c]] for _, c in split_paths]
        index[split] = np.arange(start, len(paths))
    label_array = np.asarray(labels, dtype=np.int64)
    train, val, test = index["train"], index["val"], index["test"]
    if "test" not in parts and data.test_fraction > 0:  # hold out test_fraction of train/, stratified
        keep, held, _ = split_indices(label_array[train], dataclasses.replace(data, val_fraction=data.test_fraction,
                                                                              test_fraction=0.0))
        train, test = train[keep], train[held]
    _check_files(paths)
    return ImageRows(tuple(paths), label_array, names, (train, val, test), given=True)


def _split_folders(root: Path) -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        for split, aliases in SPLIT_FOLDERS.items():
            if child.is_dir() and child.name.lower() in aliases and split not in found:
                found[split] = child
    return found


def _image_folder(root: Path) -> Tuple[List[Tuple[Path, int]], Tuple[str, ...]]:
    """(path, class index) of every image under each class sub-folder of ``root``, and the class names."""
    classes = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        raise DataError(f"data.path: {root} has no class sub-folders. Put each class's images in a sub-folder "
                        "named after the class (cat/, dog/ ...).")
    items: List[Tuple[Path, int]] = []
    for index, folder in enumerate(classes):
        images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                        and not p.name.startswith("."))
        if not images:
            raise DataError(f"data.path: class folder {folder} holds no images ({', '.join(EXTENSIONS)}), got an "
                            "empty folder. Add images to it or remove it.")
        items += [(path, index) for path in images]
    if len(classes) < 2:
        raise DataError(f"data.path: image classification needs at least 2 classes, got 1 ({classes[0].name}) in "
                        f"{root}. Add a sub-folder per class.")
    return items, tuple(folder.name for folder in classes)


def _split_rows(items: List[Tuple[Path, int]], names: Tuple[str, ...], data: DataConfig) -> ImageRows:
    import pandas as pd

    frame = pd.DataFrame({"path": [p for p, _ in items], "label": [c for _, c in items]})
    frame = subsample(frame, frame["label"].to_numpy(), data)
    labels = frame["label"].to_numpy(dtype=np.int64)
    paths = [Path(p) for p in frame["path"]]
    _check_files(paths)
    return ImageRows(tuple(paths), labels, names, _every_class_in_every_split(labels, names, data), given=False)


def _from_table(table: Path, data: DataConfig) -> ImageRows:
    frame = read_table(data, {"data.image_column": data.image_column, "data.label_column": data.label_column})
    frame = frame.dropna(subset=[data.image_column, data.label_column])
    raw = frame[data.label_column].astype(str)
    names = tuple(sorted(raw.unique()))
    if len(names) < 2:
        raise DataError(f"data.label_column: image classification needs at least 2 classes, got {list(names)} in "
                        f"column {data.label_column!r}. Point data.label_column at the label column.")
    lookup = {name: i for i, name in enumerate(names)}
    root = table.parent.resolve()
    frame = frame.assign(_label=raw.map(lookup).to_numpy(dtype=np.int64),  # rows as numbered in the file
                         _path=[_inside(root, str(value), data.image_column, row)
                                for row, value in zip(frame.index, frame[data.image_column], strict=True)])
    frame = subsample(frame, frame["_label"].to_numpy(), data)
    paths = list(frame["_path"])
    _check_files(paths)
    labels = frame["_label"].to_numpy(dtype=np.int64)
    return ImageRows(tuple(paths), labels, names, _every_class_in_every_split(labels, names, data), given=False)


def _every_class_in_every_split(labels: np.ndarray, names: Tuple[str, ...], data: DataConfig
                                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stratified split; a class the fractions leave without an image in a split is refused (its scores there
    would be undefined, and a model never validated on it could win)."""
    splits = split_indices(labels, data)
    wanted = (("train", 1.0), ("val", data.val_fraction), ("test", data.test_fraction))
    for (name, fraction), index in zip(wanted, splits, strict=True):
        missing = sorted(set(range(len(names))) - set(labels[index].tolist())) if fraction > 0 else []
        if missing:
            count = int(np.sum(labels == missing[0]))
            raise DataError(f"data: class {names[missing[0]]!r} has no images in the {name} split, got {count} "
                            f"image(s) of it in all, too few for data.val_fraction={data.val_fraction} and "
                            f"data.test_fraction={data.test_fraction}. Add images of it, or remove the class.")
    return splits


def _inside(root: Path, value: str, column: str, row: int) -> Path:
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"data.image_column: data row {row} of column {column!r} points outside the data folder "
                        f"{root}, got {value!r}. Keep the images in the table's folder and give paths relative "
                        "to it.")
    return path


# --- checking and decoding files ---------------------------------------------------------------------------

def _check_files(paths: Sequence[Path]) -> None:
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        problems = [p for p in pool.map(_problem, paths) if p]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"data.path: {problems[0]}{more}. Replace or remove the file(s).")


def _problem(path: Path) -> Optional[str]:
    """What is wrong with an image file (None when its header reads and it is not cut short)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            kind = image.format
            image.size  # noqa: B018 - reading the header is the check
    except FileNotFoundError:
        return f"image file not found, got {path}"
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, the file is not a readable image
        return f"cannot read image {path} ({one_line(exc)})"
    check = _COMPLETE.get(kind or "")
    if check is not None and not check(path):
        return f"image {path} is truncated (its {kind} data ends early)"
    return None


def _jpeg_complete(path: Path) -> bool:
    return _tail(path, 64).rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")  # the end-of-image marker


def _png_complete(path: Path) -> bool:
    return b"IEND" in _tail(path, 64)


def _riff_complete(path: Path) -> bool:  # WebP: RIFF's size field counts the bytes after its first 8
    with path.open("rb") as file:
        header = file.read(8)
    return len(header) == 8 and int.from_bytes(header[4:8], "little") + 8 <= path.stat().st_size


def _bmp_complete(path: Path) -> bool:
    with path.open("rb") as file:
        header = file.read(6)
    return len(header) == 6 and int.from_bytes(header[2:6], "little") <= path.stat().st_size


_COMPLETE: Dict[str, Callable[[Path], bool]] = {"JPEG": _jpeg_complete, "PNG": _png_complete,
                                                "WEBP": _riff_complete, "BMP": _bmp_complete}


def _tail(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - size))
        return file.read()


def _decode(path: Path, resize: Resize) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "JPEG":  # decoded at a reduced scale when much larger (fast; served ones alike)
                image.draft("RGB", (resize.size * 2, resize.size * 2))
            return resize.apply(image)
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, the file is not a decodable image
        raise DataError(f"data.path: cannot decode image {path} ({one_line(exc)}). Replace or remove the file."
                        ) from None


def _rgb(image: PILImage) -> PILImage:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")

