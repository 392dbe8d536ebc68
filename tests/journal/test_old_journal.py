"""A journal written by finesweep 0.1, before its events were typed and its modules moved, still syncs and resumes.

The fixture (``fixtures/finesweep-0.1/``) is what that version left of a real sweep of the tiny BERT on the tiny
CSV (``tests/conftest.py`` builds both the same way every time): it was interrupted with Ctrl-C during trial 1's
third epoch while its MLflow server was unreachable, so nothing reached MLflow. It holds the journal as written
and the checkpoints the journal names (trial 0's best weights; trial 1's, and its training state). The sweep ran
under ``/tmp/fsfix``; the test moves it to its own folder, as a user moves a project.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import build_tiny_bert, write_csv
from e2e import events, metric_steps, run_cli, runs
from finesweep.journal import file as journal_file
from finesweep.journal.events import SweepEnded, SweepStarted, TrialInterrupted, TrialResult
from finesweep.journal.file import read_events
from finesweep.journal.records import TrialStatus
from finesweep.journal.replay import find_sweeps, load_state

FIXTURE = Path(__file__).parent / "fixtures" / "finesweep-0.1"
WRITTEN_UNDER = "/tmp/fsfix"
SWEEP = """objective: {metric: val/accuracy, mode: max}
search: {sampler: random, num_trials: 3, max_concurrent: 1, seed: 0}
scheduler: {kind: fifo, max_epochs: 3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 3.0e-2}
"""


def moved(root: Path) -> Path:
    """The fixture's sweep under ``root``, its paths rewritten (and each line's checksum with them); its model and
    data built again where its config says they are."""
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    (journal,) = root.glob("mlruns/ray/finesweep/*/events.jsonl")
    lines = []
    for line in journal.read_text().splitlines():
        body = line.split(" ", 1)[1].replace(WRITTEN_UNDER, str(root))
        lines.append(f"{journal_file._digest(body)} {body}")
    journal.write_text("\n".join(lines) + "\n")
    build_tiny_bert(root / "tiny-bert")
    write_csv(root / "tiny.csv")
    (root / "calm.yaml").write_text(SWEEP)
    return journal.parent


def test_the_old_journal_replays_into_typed_events(tmp_path: Path) -> None:
    folder = moved(tmp_path)
    every = list(read_events(folder / "events.jsonl"))
    assert isinstance(every[0], SweepStarted) and every[0].name == "calm" and every[0].data_fingerprint
    assert isinstance(every[-1], SweepEnded) and every[-1].status == "KILLED"
    assert [type(e).__name__ for e in every if type(e).__name__ == "UnknownEvent"] == []
    state = load_state(folder)
    assert state.status == "KILLED" and state.budget == 3
    assert state.trials[0].status is TrialStatus.completed and len(state.trials[0].history) == 3
    assert state.trials[1].interrupted and state.trials[1].epochs == 2
    assert state.trials[1].resumable_checkpoint() is not None
    assert (Path(state.trials[1].resumable_checkpoint() or "") / "state.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_old_journal_syncs_then_resumes_to_the_end_exactly_once(tmp_path: Path) -> None:
    folder = moved(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    synced = run_cli(["sync", f"tracking.uri={uri}"], tmp_path, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    found = runs(uri, "calm")
    assert [p.info.status for p in found["parents"]] == ["KILLED"]
    assert sorted(c.info.run_name for c in found["children"]) == ["trial-000", "trial-001"]

    resumed = run_cli(["resume", "calm", f"tracking.uri={uri}"], tmp_path, timeout=500)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert find_sweeps(str(tmp_path / "mlruns" / "ray")) == [folder], "the same sweep went on"
    epochs: Dict[int, List[int]] = {}
    for event in read_events(folder / "events.jsonl"):
        if isinstance(event, TrialResult):
            epochs.setdefault(event.number, []).append(int(event.metrics["epoch"]))
    assert epochs == {0: [1, 2, 3], 1: [1, 2, 3], 2: [1, 2, 3]}, "trial 1 went on from its epoch-2 checkpoint"
    assert sum(isinstance(e, TrialInterrupted) for e in read_events(folder / "events.jsonl")) == 1
    state = load_state(folder)
    assert state.status == "FINISHED" and state.selections == 1

    found = runs(uri, "calm")
    (parent,) = found["parents"]
    assert parent.info.status == "FINISHED" and parent.data.tags["finesweep.registered_model"] == "calm/1"
    search = {c.info.run_name: c for c in found["children"] if c.data.tags["finesweep.phase"] == "search"}
    assert sorted(search) == ["trial-000", "trial-001", "trial-002"]
    for child in search.values():
        assert metric_steps(found["client"], child.info.run_id, ["val/accuracy"]) == {"val/accuracy": [1, 2, 3]}, \
            f"{child.info.run_name}: every epoch logged exactly once"
    assert json.loads((folder / "mlflow.json").read_text())["sent"] == len(events(tmp_path))
