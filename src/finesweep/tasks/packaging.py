"""Writing what a served model reads beside its trained weights: the serving metadata and, for text models, the
tokenizer's files.

The weights folder may be a checkpoint's ``best/`` linked file by file (``finetune.layout.link_tree``): writing into
one of its files would change the checkpoint too, so every file is written aside, then moved in place of any file of
the same name. The predictors (``*_predictor.py``, which import nothing from finesweep) read ``META_FILE`` by the
same name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

META_FILE = "finesweep.json"
"""The serving metadata beside the weights (``Task.serving_meta``)."""


def package_beside(folder: Path, meta: Mapping[str, Any], tokenizer: Optional[Any] = None) -> None:
    """Write ``meta`` as ``META_FILE`` and, when given, ``tokenizer.save_pretrained``'s files into ``folder``,
    replacing (never writing through) files already there."""
    with tempfile.TemporaryDirectory(prefix="finesweep-package-") as side:
        if tokenizer is not None:
            tokenizer.save_pretrained(side)
        (Path(side) / META_FILE).write_text(json.dumps(dict(meta), indent=2))
        for item in Path(side).iterdir():
            (folder / item.name).unlink(missing_ok=True)
            shutil.move(str(item), folder / item.name)
