"""Checkpoint retention: the keeper deletes a finished trial's folder as soon as it can no longer win."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from finesweep.config import Mode
from finesweep.execution.checkpoints import CheckpointKeeper, disk_use
from finesweep.journal.records import TrialRecord, TrialStatus


def trial(tmp_path: Path, number: int, value: Optional[float], status: TrialStatus = TrialStatus.completed,
          phase: str = "search") -> TrialRecord:
    folder = tmp_path / f"trial{number}-{phase}"
    (folder / "best").mkdir(parents=True)
    (folder / "best" / "model.safetensors").write_bytes(b"w" * 1000)
    record = TrialRecord(f"id{number}", number, {"optim.lr": number}, status, phase=phase, checkpoint=str(folder))
    if value is not None:
        record.add_result({"val/loss": value, "epoch": 1.0}, "val/loss", Mode.min)
    return record


def test_the_best_k_stay_and_the_rest_go_as_soon_as_they_cannot_win(tmp_path: Path) -> None:
    deleted: List[int] = []
    keeper = CheckpointKeeper(2, Mode.min, deleted=lambda r: deleted.append(r.number))
    records = [trial(tmp_path, n, v) for n, v in enumerate([0.5, 0.4, 0.6, 0.3])]
    running = trial(tmp_path, 9, 0.9)
    for record in [*records, running]:
        keeper.trial_started(record)
    for record in records[:2]:
        keeper.trial_ended(record)
    assert deleted == [], "two finished trials, two kept"
    keeper.trial_ended(records[2])  # worse than both: deleted at once
    assert deleted == [2] and not Path(records[2].checkpoint or "").exists()
    keeper.trial_ended(records[3])  # better than both: pushes trial 0 (0.5) out
    assert deleted == [2, 0]
    assert sorted(keeper.kept()) == sorted([records[1].checkpoint, records[3].checkpoint])
    assert Path(running.checkpoint or "").is_dir(), "a running trial is never touched"
    assert disk_use(keeper.kept()) == 2000


def test_failed_trials_go_and_retraining_runs_stay(tmp_path: Path) -> None:
    deleted: List[int] = []
    keeper = CheckpointKeeper(3, Mode.min, deleted=lambda r: deleted.append(r.number))
    failed = trial(tmp_path, 0, 0.1, TrialStatus.failed)  # reported the best value, then failed: never ranks
    final = trial(tmp_path, 1, 0.9, phase="final")
    for record in (failed, final):
        keeper.trial_started(record)
        keeper.trial_ended(record)
    assert deleted == [0] and Path(final.checkpoint or "").is_dir()


def test_a_resumed_sweep_counts_the_trials_of_earlier_sessions(tmp_path: Path) -> None:
    past = [trial(tmp_path, n, v) for n, v in enumerate([0.2, 0.3])]
    keeper = CheckpointKeeper(2, Mode.min, past=past)
    later = trial(tmp_path, 2, 0.25)
    keeper.trial_started(later)
    keeper.trial_ended(later)
    assert not Path(past[1].checkpoint or "").exists(), "a past trial pushed out by a new one is deleted"
    assert sorted(keeper.kept()) == sorted([past[0].checkpoint, later.checkpoint])


def test_a_resumed_sweep_clears_past_losers_an_interrupted_session_left(tmp_path: Path) -> None:
    past = [trial(tmp_path, n, v) for n, v in enumerate([0.2, 0.3, 0.4])]  # 2 was not yet deleted
    deleted: List[int] = []
    keeper = CheckpointKeeper(2, Mode.min, past=past, deleted=lambda r: deleted.append(r.number))
    keeper.gone = set()
    later = trial(tmp_path, 3, 0.9)
    keeper.trial_started(later)
    keeper.trial_ended(later)
    assert sorted(deleted) == [2, 3]
    assert sorted(keeper.kept()) == sorted([past[0].checkpoint, past[1].checkpoint])


def test_the_recipes_trial_keeps_its_folder_when_it_may_be_registered(tmp_path: Path) -> None:
    """final.prefer=recipe_unless_better may register the recipe's model, however it ranked in the search."""
    deleted: List[int] = []
    keeper = CheckpointKeeper(1, Mode.min, deleted=lambda r: deleted.append(r.number), spare={"optim.lr": 0})
    records = [trial(tmp_path, n, v) for n, v in enumerate([0.9, 0.5, 0.4, 0.8])]  # trial 0 is the recipe (lr 0)
    for record in records:
        keeper.trial_started(record)
        keeper.trial_ended(record)
    assert deleted == [1, 3] and Path(records[0].checkpoint or "").is_dir()
