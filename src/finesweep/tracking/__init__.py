"""The only package that logs to MLflow: a sweep's journal becomes one parent run and one child run per trial.

The driver never waits on MLflow. Every event of the sweep's journal (finesweep.journal) is handed to a
``Projector``, which sends them to the tracking store in order, on a thread of its own. A server
that is down or slow only delays it: each event is retried with back-off until it goes through,
and the events not yet sent stay in the journal (the spool) with a cursor saying where sending stopped.
``finesweep sync`` and ``finesweep resume`` send the rest later.

Every event is sent exactly once in effect, even when a send is repeated after a crash or a timeout:
runs are found again by their ``finesweep.run_key`` tag before one is created, metrics carry the
time they were recorded (MLflow keeps one row per key, step, time and value), tags and params are
set to the same values again, and a model version is registered once per selection round.

Trials never talk to MLflow: when ASHA stops a trial, Ray ends it abruptly, which would leave an
in-trial logger's run RUNNING without its last epoch. The driver knows why a trial ended.

The package: ``projector`` sends a sweep's journal to MLflow (``cursor`` says how far it got), ``registry``
logs and registers the winner, ``store`` reads sweeps and models back (``finesweep ls``, ``serve``), ``tags``
names what finesweep writes there.
"""

from finesweep.tracking.cursor import Cursor, parent_run
from finesweep.tracking.projector import Projector, artifact_root_of, sync_log, unsent
from finesweep.tracking.store import SweepRow, list_sweeps, request_example, resolve_model
from finesweep.tracking.tags import UI_VIEW

__all__ = ["UI_VIEW", "Cursor", "Projector", "SweepRow", "artifact_root_of", "list_sweeps", "parent_run",
           "request_example", "resolve_model", "sync_log", "unsent"]
