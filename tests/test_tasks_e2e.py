"""Image classification and NER through every finesweep command, end to end: a sweep killed mid-way and
resumed (every trial exactly once), the report, the per-class (per-entity) table of the registered model on the
parent run, checked against its test metric, and the winner served over REST by `finesweep serve`.

Real processes throughout: the `finesweep` CLI with its local Ray, a SQLite MLflow store, Lightning fits of tiny
models built here (a ViT, and a BERT for NER), data drawn or written here.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import pytest

from e2e import Driver, results
from ner_data import build_tiny_ner_bert, make_sentences, write_conll
from servers import free_port
from test_results_e2e import Served
from test_resume_e2e import assert_exactly_once, uri
from vision import CLASSES, build_tiny_vit, image_folder

pytestmark = pytest.mark.slow

VISION = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: random, num_trials: 3, max_concurrent: 1, seed: 1}
scheduler: {kind: asha, max_epochs: 2, grace_period: 1, reduction_factor: 2}
optim: {lr: 2.0e-3}          # the recipe: trial 0
data: {batch_size: 16}
finetune: {lora: {target_modules: [q_proj, v_proj]}}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 5.0e-3}
  data.augment: {distribution: categorical, choices: [none, flip, crop_flip]}
  finetune.strategy: {distribution: categorical, choices: [full, lora]}
"""

NER = """
objective: {metric: val/entity_f1, mode: max}
search: {sampler: random, num_trials: 2, max_concurrent: 1, seed: 2}
scheduler: {kind: asha, max_epochs: 2, grace_period: 1, reduction_factor: 2}
optim: {lr: 3.0e-3}          # the recipe: trial 0
data: {batch_size: 16, max_length: 16}    # long sentences are split into pieces at word boundaries
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 5.0e-3}
  finetune.strategy: {distribution: categorical, choices: [full, lora]}
"""


def kill_and_resume(cwd: Path, args: List[str], kill_after: int) -> tuple[str, str]:
    """Start a sweep, SIGKILL it (and its Ray) once ``kill_after`` epoch results are in, resume it to the end;
    return what each printed."""
    driver = Driver(args, cwd)
    driver.wait_for_results(kill_after, timeout=300)
    driver.kill()
    resumed = Driver(["resume"], cwd)
    assert resumed.wait(timeout=480) == 0, resumed.output()
    return driver.output(), resumed.output()


def parent_table(cwd: Path, experiment: str, name: str) -> tuple[pd.DataFrame, Dict[str, float]]:
    """The parent run's ``final/<name>.csv`` and its metrics."""
    from e2e import runs

    found = runs(uri(cwd), experiment)
    parent = found["parents"][0]
    local = found["client"].download_artifacts(parent.info.run_id, f"final/{name}.csv", str(cwd / "downloaded"))
    return pd.read_csv(local), parent.data.metrics


def post(port: int, payload: Dict[str, Any]) -> List[Dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    answer: List[Dict[str, Any]] = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    return answer


def served_in_process(cwd: Path, model: str, frame: pd.DataFrame, params: Any = None) -> pd.DataFrame:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri(cwd))
    try:
        predicted: pd.DataFrame = mlflow.pyfunc.load_model(f"models:/{model}").predict(frame, params=params)
        return predicted
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.timeout(900)
def test_an_image_sweep_resumes_reports_registers_and_serves(tmp_path: Path) -> None:
    images = image_folder(tmp_path / "shapes", per_class=24)
    model = build_tiny_vit(tmp_path / "vit")
    (tmp_path / "vision.yaml").write_text(VISION)
    args = ["run", "vision.yaml", f"data.path={images}", f"model.name_or_path={model}",
            "data.map_above_mb=0"]  # memory-mapped: every Ray worker maps the files the driver wrote
    first, resumed = kill_and_resume(tmp_path, args, kill_after=2)
    assert results(tmp_path) >= 3
    assert_exactly_once(tmp_path, "vision", planned=3)
    assert "3-class image classification (disc, square, stripes) at 32 px, 0.2 MiB memory-mapped" in first, first
    report = next(line for line in resumed.splitlines() if line.startswith("report: "))
    assert Path(report.removeprefix("report: ").strip()).is_file()

    table, metrics = parent_table(tmp_path, "vision", "per_class")
    assert table["class"].tolist() == list(CLASSES)
    test_rows = int(table["support"].sum())
    assert test_rows == 6  # 10% of each class's 24 images, rounded: 2 + 2 + 2
    correct = (table["accuracy"] * table["support"]).sum()  # per-class hits add up to the test accuracy
    assert correct / test_rows == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    assert {"test/accuracy", "test/f1_macro", "test/loss"} <= set(metrics)

    sample = [next((images / kind).glob("*.png")) for kind in CLASSES]
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in sample]
    port = free_port()
    served = Served(["serve", "--port", str(port)], tmp_path)
    try:
        served.wait_until_up(f"http://127.0.0.1:{port}/ping", timeout=180)
        assert "serving models:/vision/1" in served.output() and '"params": {"top_k": 3}' in served.output()
        by_text = post(port, {"dataframe_records": [{"image": text} for text in encoded], "params": {"top_k": 2}})
        by_bytes = post(port, {"dataframe_records": [{"image_bytes": text} for text in encoded]})
    finally:
        served.stop()
    expected = served_in_process(tmp_path, "vision/1", pd.DataFrame({"image": [str(p) for p in sample]}),
                                 params={"top_k": 2})  # by path, in this process (it sets MLflow's env: last)
    assert [row["label"] for row in by_text] == [row["label"] for row in by_bytes] == list(expected["label"])
    assert [row["score"] for row in by_text] == pytest.approx(list(expected["score"]), abs=1e-5)
    for row in by_text:
        assert len(row["top_labels"]) == 2 and set(row["top_labels"]) <= set(CLASSES)
        assert row["top_scores"][0] == pytest.approx(row["score"]) and row["top_scores"][0] >= row["top_scores"][1]


@pytest.mark.timeout(900)
def test_a_ner_sweep_resumes_reports_registers_and_serves(tmp_path: Path) -> None:
    conll = write_conll(tmp_path / "people.conll", make_sentences(200, seed=0))
    model = build_tiny_ner_bert(tmp_path / "bert")
    (tmp_path / "ner.yaml").write_text(NER)
    first, resumed = kill_and_resume(tmp_path, ["run", "ner.yaml", f"data.path={conll}",
                                                f"model.name_or_path={model}"], kill_after=2)
    assert_exactly_once(tmp_path, "ner", planned=2)
    assert "IOB2 tags of 3 entity types (LOC, ORG, PER)" in first and "no word dropped" in first, first
    assert any(line.startswith("report: ") for line in resumed.splitlines())

    table, metrics = parent_table(tmp_path, "ner", "per_entity")
    assert sorted(table["entity"]) == ["LOC", "ORG", "PER", "micro avg"]
    micro = table.set_index("entity").loc["micro avg"]
    assert micro["f1"] == pytest.approx(metrics["test/entity_f1"], abs=1e-6)
    assert {"test/entity_precision", "test/entity_recall", "test/token_accuracy"} <= set(metrics)

    texts = ["mr anna smith lives in new york .", "the acme corp hired mr boris yesterday .",
             "Anna Smith flew from Paris to New York for the Red Cross."]  # README's curl line
    port = free_port()
    served = Served(["serve", "--port", str(port)], tmp_path)
    try:
        served.wait_until_up(f"http://127.0.0.1:{port}/ping", timeout=180)
        assert "serving models:/ner/1" in served.output() and texts[-1] in served.output()
        answer = post(port, {"dataframe_records": [{"text": text} for text in texts]})
    finally:
        served.stop()
    expected = served_in_process(tmp_path, "ner/1", pd.DataFrame({"text": texts}))
    for row, same in zip(answer, expected["entities"], strict=True):  # REST answers as the model loaded here
        assert [{k: v for k, v in e.items() if k != "score"} for e in row["entities"]] == [
            {k: v for k, v in e.items() if k != "score"} for e in same]
        assert [e["score"] for e in row["entities"]] == pytest.approx([e["score"] for e in same], abs=1e-5)
    for text, row in zip(texts, answer, strict=True):
        for entity in row["entities"]:  # character offsets into the text, word-aligned
            assert text[entity["start"]:entity["end"]] == entity["word"] and 0 < entity["score"] <= 1
            assert entity["start"] == 0 or text[entity["start"] - 1] == " "
            assert entity["entity_group"] in {"LOC", "ORG", "PER"}
