"""Connecting to Ray, and making sure the cluster can run the sweep before any trial starts.

An empty ``cluster.address`` starts a local Ray on this machine, bound to 127.0.0.1, and stops it
after the sweep. Any other address joins an existing cluster (``auto``, ``HOST:PORT``), which
finesweep only ever disconnects from. Joining keeps Ray's token authentication on: when a token is
available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and
``RAY_AUTH_MODE`` is unset, finesweep joins in token mode. Workers get their environment and
finesweep's own code through the job's ``runtime_env``, so every node runs the driver's version.

Ray's own log output (and its C++ core's, which writes straight to the process's stderr while
connecting) goes to the sweep's log file, out of the user's way; the CLI prints its path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import finesweep
from finesweep.errors import UserError, one_line

if TYPE_CHECKING:
    from finesweep.config import ClusterConfig, ExperimentConfig

WORKER_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials use absolute paths and must not depend on the cwd
    "TOKENIZERS_PARALLELISM": "false",  # one trial per worker process; tokenising happened on the driver
}
"""Environment of every Ray worker, on every node: set through the job's ``runtime_env``."""

FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "AWS_ENDPOINT_URL",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")
"""Driver variables workers need too (where the hub is, credentials of your own S3 clients), forwarded when set."""

DRIVER_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # read by Tune on the driver and propagated to its trial actors
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # MLflow is the record; skip Ray's CSV/JSON/TB files
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy reporter prints nothing
    "RAY_NUM_REDIS_GET_RETRIES": "5",  # seconds to reach a cluster that answers (default 20): fail fast
}
"""Flags Ray and Ray Tune read in the driver process itself."""

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "optuna", "lightning", "lightning.pytorch",
               "lightning.fabric", "transformers", "filelock", "mlflow", "alembic")


@contextlib.contextmanager
def ray_session(config: ExperimentConfig) -> Iterator[Path]:
    """Connect to Ray for the duration of a sweep, check the cluster can run it; yield the log file's path.

    Raises:
        UserError: the cluster cannot be reached or joined, or cannot run the sweep (checks below).
    """
    cluster = config.cluster
    log_file = _log_to_file(Path(cluster.log_dir), config.name)
    for name, value in DRIVER_ENV.items():
        os.environ.setdefault(name, value)
    import ray
    import ray.tune  # noqa: F401 - imported here so its loggers exist before they are routed

    route_library_logs()  # importing ray gives its logger a terminal handler
    kwargs: Dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                                  configure_logging=False)
    if cluster.address:
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # this driver is a Ray job's entrypoint
            _leave_job_dir(cluster)
        _join(cluster, kwargs, log_file)
    else:
        # Trials of several workers need Ray's state API (the dashboard's): Train's placement-group cleaner asks it
        # whether a stopped trial's controller is gone before it frees the trial's workers' reservation.
        kwargs.update(include_dashboard=cluster.distributed, dashboard_host="127.0.0.1")
        from finesweep.adapters import ray_private

        unavailable = ray_private.dashboard_unavailable() if cluster.distributed else None
        if unavailable:
            raise UserError(f"cluster.workers_per_trial={cluster.workers_per_trial} on a local Ray needs Ray's "
                            f"dashboard (its state API frees a stopped trial's workers), which cannot start: "
                            f"{unavailable}. Install it (pip install 'finesweep[cluster]'), or use "
                            "cluster.workers_per_trial=1.")
        ray.init(address="local", _node_ip_address="127.0.0.1", runtime_env={"env_vars": worker_env()}, **kwargs)
    route_library_logs()
    try:
        check_cluster(config, joined=bool(cluster.address))
        yield log_file
    finally:
        ray.shutdown()  # stops a Ray this session started; only disconnects from one it joined


def _leave_job_dir(cluster: ClusterConfig) -> None:
    """A Ray job's driver starts in the job's unpacked working_dir, which Ray deletes after the job and
    unpacks again when the driver joins with its own runtime_env, removing the folder the driver
    stands in (os.getcwd then fails, in Tune's end of fit). Keep the sweep's state out of it, and
    stand elsewhere before joining: every path was made absolute when the config was composed.

    Raises:
        UserError: ``cluster.storage_path`` is inside the job's working_dir.
    """
    here = Path.cwd().resolve()
    storage = Path(cluster.storage_path).resolve()
    if storage == here or here in storage.parents:
        raise UserError(f"cluster.storage_path: {storage} is inside the Ray job's working_dir, which Ray deletes "
                        "after the job: the sweep's log and checkpoints would go with it. Give a folder outside "
                        "it that every node sees (cluster.storage_path=/shared/finesweep).")
    storage.mkdir(parents=True, exist_ok=True)
    os.chdir(storage)


def worker_env() -> Dict[str, str]:
    """What every worker's environment gets: ``WORKER_ENV`` plus the forwarded driver variables."""
    return {**{name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}, **WORKER_ENV}


def _join(cluster: ClusterConfig, kwargs: Dict[str, Any], log_file: Path) -> None:
    import ray

    address = resolve_address(cluster.address)
    _reachable(cluster.address, address)
    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        # The cluster may use it, and a token-mode driver joins either kind. Ray turns it on by itself only
        # for address=auto on the head's own machine; its config is cached, so refresh it as Ray does then.
        from finesweep.adapters import ray_private

        os.environ["RAY_AUTH_MODE"] = "token"
        ray_private.reread_auth_config()
    modules = [str(Path(finesweep.__file__).parent), *cluster.py_modules]
    runtime_env = {"env_vars": worker_env(), "py_modules": modules}
    with _stderr_to(log_file):
        try:
            ray.init(address=address, runtime_env=runtime_env, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every way of not joining is one line for the user
            raise UserError(_join_failure(cluster.address, address, exc)) from None


def resolve_address(address: str) -> str:
    """``auto`` (``RAY_ADDRESS``, else the cluster started on this machine) or ``HOST:PORT`` -> ``HOST:PORT``.

    Raises:
        UserError: ``auto`` finds no cluster, or the address is a Ray Client address.
    """
    if address.startswith("ray://"):
        raise UserError(f"cluster.address: {address} is a Ray Client address; with it Ray Tune runs its driver "
                        "loop on the cluster, out of reach of finesweep's log, live view and MLflow sender. Run "
                        "finesweep on a cluster node (cluster.address=auto or HEAD:6379), or submit it: ray job "
                        "submit --address http://HEAD:8265 --working-dir . -- finesweep run SWEEP cluster=ray")
    if address != "auto":
        return address
    from finesweep.adapters import ray_private

    found = ray_private.auto_address()
    if not found:
        raise UserError("cluster.address=auto: no Ray cluster runs on this machine and RAY_ADDRESS is not set. "
                        "Start one (ray start --head) or set cluster.address=HEAD:6379.")
    return found


def _reachable(given: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return
    except (OSError, ValueError) as exc:
        raise UserError(f"cluster.address: cannot reach a Ray cluster at {address} ({one_line(exc)})"
                        f"{'' if given == address else f', from {given}'}. Start it (ray start --head "
                        "--port=6379) or fix cluster.address (HOST:PORT of the head node).") from None


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def _join_failure(given: str, address: str, exc: BaseException) -> str:
    chain: List[str] = []
    cause: Optional[BaseException] = exc
    while cause is not None and len(chain) < 5:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    if "uthentication" in text or "InvalidAuthToken" in text or "auth_token" in text:
        return (f"cluster.address={given}: the Ray cluster at {address} uses token authentication and no valid "
                "token was found. Get it on the head node (ray get-auth-token) and give it to finesweep with "
                "RAY_AUTH_TOKEN=..., RAY_AUTH_TOKEN_PATH=/path/to/token or ~/.ray/auth_token; RAY_AUTH_MODE=token "
                "is then set for you.")
    return (f"cluster.address={given}: could not join the Ray cluster at {address} ({one_line(exc, kind=True)}). "
            "Check that its Ray version matches this one and that its head node is up (ray status there).")


@contextlib.contextmanager
def _stderr_to(log_file: Path) -> Iterator[None]:
    """Point file descriptor 2 at the log file: Ray's C++ core prints connection retries there directly."""
    saved = os.dup(2)
    with open(log_file, "a") as target:
        os.dup2(target.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# --- can this cluster run the sweep? ------------------------------------------------------------------

def check_cluster(config: ExperimentConfig, joined: bool) -> None:
    """Before any trial starts: a trial fits on a node; with several nodes the tracking store is a server;
    on a cluster finesweep joined, every node can read the model and write the storage path.

    A local Ray this session started runs on this machine, where the driver already checked both.

    Raises:
        UserError: the first problem, with what was asked, what the cluster has and the fix.
    """
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    _check_fit(config.cluster, nodes)
    uri = config.tracking.uri
    if len(nodes) > 1 and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        raise UserError(f"tracking.uri: {uri} is a store on this machine only, and the cluster has {len(nodes)} "
                        "nodes. Use an MLflow server that every user of the cluster reaches (mlflow server "
                        "--serve-artifacts; tracking.uri=http://HOST:5000).")
    if not joined:
        _write_probe(config.cluster.storage_path)
        return
    problems = [p for node in nodes for p in _node_problems(config, node, several=len(nodes) > 1)]
    if problems:
        raise UserError(problems[0])


def _has(node: Dict[str, Any], name: str) -> float:
    return float(node.get("Resources", {}).get(name, 0.0))


def _check_fit(cluster: ClusterConfig, nodes: List[Dict[str, Any]]) -> None:
    if cluster.distributed:
        _check_workers_fit(cluster, nodes)
        return
    has = _has
    if any(has(n, "CPU") >= cluster.cpus_per_trial and has(n, "GPU") >= cluster.gpus_per_trial for n in nodes):
        return
    largest = max(nodes, key=lambda n: (has(n, "GPU"), has(n, "CPU")), default={})
    raise UserError(f"cluster.cpus_per_trial={cluster.cpus_per_trial:g}, cluster.gpus_per_trial="
                    f"{cluster.gpus_per_trial:g}: a trial fits on no node of the cluster; the largest has "
                    f"{has(largest, 'CPU'):g} CPU(s) and {has(largest, 'GPU'):g} GPU(s). Lower them to fit "
                    "(fractions pack several trials on one GPU), or add a node that has them.")


def _check_workers_fit(cluster: ClusterConfig, nodes: List[Dict[str, Any]]) -> None:
    """A trial of several workers fits when each worker fits on some node and the nodes together hold all of them
    at once (its placement group; ``pack`` and ``spread`` are best effort, so any nodes do)."""
    cpus, gpus, workers = cluster.worker_cpus, cluster.worker_gpus, cluster.workers_per_trial

    def holds(node: Dict[str, Any]) -> int:
        room = [_has(node, "CPU") / cpus] + ([_has(node, "GPU") / gpus] if gpus > 0 else [])
        return int(min(room) + 1e-9)

    asked = f"cluster.workers_per_trial={workers}, {cpus:g} CPU(s) and {gpus:g} GPU(s) per worker"
    if not any(holds(n) for n in nodes):
        largest = max(nodes, key=lambda n: (_has(n, "GPU"), _has(n, "CPU")), default={})
        raise UserError(f"{asked}: a worker fits on no node of the cluster; the largest has {_has(largest, 'CPU'):g} "
                        f"CPU(s) and {_has(largest, 'GPU'):g} GPU(s). Lower cluster.cpus_per_worker / "
                        "cluster.gpus_per_worker to fit, or add a node that has them.")
    room = sum(holds(n) for n in nodes)
    if room < workers:
        raise UserError(f"{asked}: the cluster holds {room} such worker(s) at once over its {len(nodes)} node(s), "
                        f"so a trial could never start. Lower cluster.workers_per_trial to at most {room}, ask less "
                        "per worker, or add nodes.")


def _node_problems(config: ExperimentConfig, node: Dict[str, Any], several: bool) -> List[str]:
    """What this node cannot reach: checked on the node itself, by a task pinned there.

    With several nodes the storage path must be one folder that all of them share (the sweep's log
    and every trial's checkpoints live there): the node looks for a file the driver just wrote.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    model = config.model.name_or_path
    local_model = Path(model).is_absolute()
    storage = config.cluster.storage_path
    marker = Path(storage) / f".finesweep-shared-{os.getpid()}-{time.monotonic_ns()}"
    if several:
        _write_probe(storage, marker.name)
    probe = ray.remote(num_cpus=0)(_probe).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
    try:
        found = ray.get(probe.remote(model if local_model else None, storage, str(marker) if several else None),
                        timeout=120)
    finally:
        marker.unlink(missing_ok=True)
    where = f"node {node['NodeManagerAddress']}"
    problems = []
    if found["model"] is False:
        problems.append(f"model.name_or_path: {model} is not readable on {where}"
                        f"{' (a folder on the driver only)' if several else ''}. Put the model on storage every "
                        "node sees, or use a hub id.")
    if found["storage"]:
        problems.append(f"cluster.storage_path: {storage} cannot be written on {where} ({found['storage']}). "
                        "Use a folder every node can write (NFS, EFS ...).")
    elif found["shared"] is False:
        problems.append(f"cluster.storage_path: {storage} is not shared: {where} does not see a file the driver "
                        "wrote there. Use a folder of a file system every node mounts (NFS, EFS ...).")
    return problems


def _probe(model: Optional[str], storage: str, marker: Optional[str]) -> Dict[str, Any]:
    """Runs on a node: is the model folder there, can the storage path be written, is the driver's file there?"""
    result: Dict[str, Any] = {"model": None if model is None else (Path(model) / "config.json").is_file(),
                              "shared": None if marker is None else Path(marker).is_file()}
    try:
        _write_probe(storage)
        result["storage"] = ""
    except Exception as exc:  # noqa: BLE001 - any failure to write is the answer
        result["storage"] = one_line(exc, kind=True)
    return result


def _write_probe(storage: str, keep: str = "") -> None:
    """Write a file in ``storage`` (made if missing) and delete it again, unless it is named ``keep``."""
    folder = Path(storage)
    folder.mkdir(parents=True, exist_ok=True)
    name = keep or f".finesweep-probe-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}"
    (folder / name).write_text("ok")
    if not keep:
        (folder / name).unlink()


def node_of(result: Dict[str, Any]) -> Tuple[str, str]:
    """(node, device) a trial reported from: the host and IP Ray records in each result, and the device it used."""
    node = f"{result.get('hostname', '?')} ({result.get('node_ip', '?')})"
    return node, str(result.get("device", ""))


def trials_that_fit(cluster: ClusterConfig) -> int:
    """How many trials of ``cluster.workers_per_trial`` workers the cluster's CPUs and GPUs hold at once (at least
    1): Tune runs no more, so no trial's Train run waits on another's workers."""
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0.0) / (cluster.worker_cpus * cluster.workers_per_trial)]
    if cluster.worker_gpus > 0:
        fits.append(total.get("GPU", 0.0) / (cluster.worker_gpus * cluster.workers_per_trial))
    return max(1, int(min(fits) + 1e-9))


# --- logging ------------------------------------------------------------------------------------------

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
