"""Arrays kept in a file and memory-mapped: large prepared data that every trial reads without a copy.

A ``MappedArray`` pickles as its file's path, not its bytes: Ray's object store carries a few bytes, and each
trial maps the file (read-only) on its own node, where the operating system's page cache holds one copy for
every trial. Anything derived from one (a slice, a fancy-indexed batch) is an ordinary in-memory array.
The file must be on a file system every node mounts (``cluster.storage_path``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np


class MappedArray(np.ndarray):
    """A read-only ``.npy`` file mapped into memory; pickled as its path (see the module's docstring)."""

    file: Optional[str]

    def __array_finalize__(self, obj: Any) -> None:
        self.file = None  # a view or a copy is not the whole file: it pickles as data

    def __reduce_ex__(self, protocol: Any) -> Tuple[Any, ...]:
        if self.file is None:
            reduced: Tuple[Any, ...] = np.asarray(self).__reduce_ex__(protocol)  # type: ignore[assignment]
            return reduced
        return (open_mapped, (self.file,))

    def __reduce__(self) -> Tuple[Any, ...]:
        return self.__reduce_ex__(2)


def open_mapped(path: str) -> MappedArray:
    """Map a ``.npy`` file read-only.

    Raises:
        FileNotFoundError: the file is gone (a node that does not mount ``cluster.storage_path``).
    """
    mapped: MappedArray = np.load(path, mmap_mode="r").view(MappedArray)
    mapped.file = str(path)
    return mapped


def create_mapped(path: Path, shape: Tuple[int, ...], dtype: Any) -> np.memmap:
    """A new writable ``.npy`` file of ``shape`` to fill (then ``finish_mapped``); written beside its final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    return np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)


def finish_mapped(array: np.memmap, path: Path) -> MappedArray:
    """Flush a filled ``create_mapped`` array, move it to its final name, and map it read-only."""
    array.flush()
    partial = Path(str(array.filename))
    del array
    os.replace(partial, path)
    return open_mapped(str(path))
