"""Connecting to Ray: start a local Ray (and stop it after), or join an existing cluster.

Ray's own log output goes to a file, out of the user's way; the CLI prints its path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator

from finesweep.config import ClusterConfig

WORKER_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials use absolute paths and must not depend on the cwd
    "TOKENIZERS_PARALLELISM": "false",  # one trial per worker process; tokenising happened on the driver
}
"""Environment of every Ray worker, on every node: set through the job's ``runtime_env``."""

FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")
"""Driver variables workers need too (where models come from), forwarded when set."""

DRIVER_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # read by Tune on the driver and propagated to its trial actors
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # MLflow is the record; skip Ray's CSV/JSON/TB files
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy reporter prints nothing
}
"""Flags Ray Tune reads in the driver process itself."""

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "optuna", "lightning", "lightning.pytorch",
               "lightning.fabric", "transformers", "filelock", "mlflow", "alembic")


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig, sweep_name: str) -> Iterator[Path]:
    """Connect to Ray for the duration of a sweep; yield the path of the log file.

    An empty ``cluster.address`` starts a local Ray on this machine, bound to 127.0.0.1, and
    shuts it down afterwards; any other address joins that cluster and only disconnects.
    """
    log_file = _log_to_file(Path(cluster.log_dir), sweep_name)
    for name, value in DRIVER_ENV.items():
        os.environ.setdefault(name, value)
    import ray
    import ray.tune  # noqa: F401 - imported here so its loggers exist before they are routed

    route_library_logs()  # importing ray gives its logger a terminal handler
    kwargs: Dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                                  configure_logging=False, runtime_env={"env_vars": worker_env()})
    if cluster.address:
        ray.init(address=cluster.address, **kwargs)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    route_library_logs()
    try:
        yield log_file
    finally:
        ray.shutdown()


def worker_env() -> Dict[str, str]:
    """What every worker's environment gets: ``WORKER_ENV`` plus the forwarded driver variables."""
    return {**{name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}, **WORKER_ENV}


def _log_to_file(log_dir: Path, sweep_name: str) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{sweep_name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    route_library_logs()
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    return log_file


def route_library_logs() -> None:
    """Send the libraries' log records to the sweep's log file (the root handler), not the terminal.

    ray.init(configure_logging=False) clears the "ray" logger's handlers, and Lightning adds a
    terminal handler when first imported, so this runs again after the driver imports Lightning.
    """
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
