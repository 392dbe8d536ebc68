"""The journal's typed events: one encoding, one decoding, and journals written by earlier versions still read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from finesweep.journal.events import (
    KINDS,
    RENAMED,
    BestChosen,
    Event,
    RegisterRequested,
    SweepStarted,
    TrialEnded,
    TrialResult,
    UnknownEvent,
    decode,
    encode,
)
from finesweep.journal.file import EventFile, read_events, read_records
from finesweep.journal.records import TrialStatus

VALUES: Dict[type, Any] = {str: "x", int: 3, float: 0.25, bool: True}


def example(cls: type) -> Event:
    """An event of ``cls`` with every field set to a value of its type (dicts and Optionals get one too)."""
    import typing

    hints = typing.get_type_hints(cls)
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("seq", "time"):
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        target = args[0] if typing.get_origin(hint) is typing.Union else hint
        if typing.get_origin(target) is dict:
            values[f.name] = {"a.b": 1.5}
        elif typing.get_origin(target) is list:
            values[f.name] = [{"prompt": "p", "generation": "g"}]
        elif target is TrialStatus:
            values[f.name] = TrialStatus.early_stopped
        else:
            values[f.name] = VALUES[target]
    return cls(seq=7, time=1.5, **values)


@pytest.mark.parametrize("cls", list(KINDS.values()), ids=list(KINDS))
def test_every_kind_survives_a_trip_through_the_journal(cls: type, tmp_path: Path) -> None:
    event = example(cls)
    assert decode(json.loads(json.dumps(encode(event)))) == event
    journal = EventFile(tmp_path)
    written = journal.append(event)
    journal.close()
    assert written.seq == 0 and written.time > 1.5, "the file numbers and times what it appends"
    (read,) = read_events(tmp_path / "events.jsonl")
    assert read == written and type(read) is cls
    (record,) = read_records(tmp_path / "events.jsonl")
    assert record["kind"] == cls.KIND and set(record) == {"seq", "kind", "time",
                                                          *(f.name for f in dataclasses.fields(cls))}


def test_enums_are_written_by_value_and_read_back_as_members() -> None:
    ended = TrialEnded(number=2, status=TrialStatus.failed, failure="oom")
    record = json.loads(json.dumps(encode(ended), default=lambda v: v.value))
    assert record["status"] == "failed"
    assert decode(record).status is TrialStatus.failed  # type: ignore[attr-defined]


def test_a_journal_of_an_earlier_version_reads_with_defaults_and_old_names() -> None:
    """What finesweep 0.1 wrote before seen_at, data_fingerprint or the task's preprocessor existed."""
    result = decode({"seq": 4, "kind": "trial_result", "time": 10.0, "number": 1, "metrics": {"epoch": 1.0},
                     "at": 10000, "checkpoint": None})
    assert isinstance(result, TrialResult) and result.seen_at == 0.0 and result.node == ""
    register = decode({"seq": 9, "kind": "register", "time": 11.0, "round": 0, "name": "demo", "checkpoint": "/c",
                       "tokenizer": "/models/minilm", "meta": {"task": "classification"}})
    assert isinstance(register, RegisterRequested)
    assert register.preprocessor == "/models/minilm" and register.task == "classification"
    assert RENAMED["register"] == {"tokenizer": "preprocessor"}


def test_an_unknown_kind_keeps_its_place_and_its_data() -> None:
    record = {"seq": 12, "kind": "from_the_future", "time": 3.0, "answer": 42}
    event = decode(record)
    assert isinstance(event, UnknownEvent) and event.seq == 12 and event.data == {"answer": 42}
    assert encode(event) == record


def test_a_missing_required_field_is_an_error_that_names_the_event() -> None:
    with pytest.raises(ValueError, match=r"journal event 5 \(best\) lacks a field"):
        decode({"seq": 5, "kind": "best", "time": 1.0, "round": 0})


def test_every_kind_has_its_own_name_and_the_header_is_durable() -> None:
    kinds: List[str] = [cls.KIND for cls in KINDS.values()]
    assert len(set(kinds)) == len(kinds) and "" not in kinds
    assert SweepStarted.DURABLE and not TrialResult.DURABLE and not BestChosen.DURABLE
