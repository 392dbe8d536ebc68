"""Cluster-wide searches on a real multi-node Ray cluster (token auth on), logging to a real MLflow server
with a PostgreSQL backend, all on this machine's loopback addresses.

The cluster: a head (127.0.0.2, 2 CPUs) and a second node (127.0.0.3, 2 CPUs, 2 GPUs declared, a
custom resource). The GPUs are Ray resources only: a trial that gets one finds no CUDA and trains on
the CPU, which is what finesweep does on a GPU-less node, while Ray's packing is the real thing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from e2e import events
from servers import MlflowServer, Postgres, RayCluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    started = RayCluster(tmp_path_factory.mktemp("cluster"))
    try:
        started.start([["--num-cpus=2", "--num-gpus=2", '--resources={"special": 4}']])
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    postgres = Postgres()
    postgres.start()
    mlflow = MlflowServer(tmp_path_factory.mktemp("mlflow"), backend=postgres.uri)
    try:
        mlflow.start()
        yield mlflow
    finally:
        mlflow.stop()
        postgres.stop()


def finesweep(args: List[str], cwd: Path, cluster: RayCluster, timeout: int = 420,
              **env: str) -> subprocess.CompletedProcess:
    """The finesweep CLI as a user of the cluster runs it: the cluster's token in ~/.ray, RAY_AUTH_MODE unset."""
    from finesweep.config.compose import project_dir

    return subprocess.run([sys.executable, "-m", "finesweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=cluster.env(FINESWEEP_PROJECT=str(project_dir()), HF_HUB_OFFLINE="1",
                                                           COLUMNS="200", **env))


def sweep(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return path


def base(tiny_model: Path, tiny_csv: Path, tmp_path: Path) -> List[str]:
    return [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
            "data.max_length=32", "data.max_samples=null", f"cluster.storage_path={tmp_path / 'shared'}"]


SPREAD = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: random, num_trials: 6, max_concurrent: 4, seed: 0}
scheduler: {kind: fifo, max_epochs: 2}
optim: {lr: 5.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 2.0e-2}
"""


@pytest.mark.timeout(600)
def test_a_sweep_fans_out_over_both_nodes_and_lands_on_the_server(cluster: RayCluster, server: MlflowServer,
                                                                  tmp_path: Path, tiny_model: Path,
                                                                  tiny_csv: Path) -> None:
    from mlflow.tracking import MlflowClient

    file = sweep(tmp_path, "spread", SPREAD)
    result = finesweep(["run", str(file), "cluster=ray", "cluster.cpus_per_trial=1", "cluster.gpus_per_trial=0",
                        f"tracking.uri={server.uri}", *base(tiny_model, tiny_csv, tmp_path)], tmp_path, cluster,
                       RAY_ADDRESS=cluster.address)  # cluster=ray is address: auto, found through RAY_ADDRESS
    assert result.returncode == 0, result.stdout + result.stderr
    for noise in ("View run", "View experiment", "Successfully registered", "Created version", "WARNING"):
        assert noise not in result.stdout + result.stderr, f"{noise!r} belongs in the sweep's log"

    client = MlflowClient(server.uri)  # everything is read back through the server
    experiment = client.get_experiment_by_name("spread")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    every = client.search_runs([experiment.experiment_id])
    parents = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in every if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6 and parents[0].info.status == "FINISHED"
    nodes = {c.data.tags["finesweep.node"].split("(")[-1].rstrip(")") for c in children}
    assert nodes == {"127.0.0.2", "127.0.0.3"}, f"trials ran on both nodes: {nodes}"
    assert {c.data.tags["finesweep.device"] for c in children} == {"cpu"}
    from finesweep.execution.trial import cpu_has_bf16  # precision auto: bf16 autocast where this CPU computes in bf16

    assert {c.data.tags["finesweep.precision"] for c in children} == {"bf16-mixed" if cpu_has_bf16() else "32-true"}
    assert "best_model" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    name, version = parents[0].data.tags["finesweep.registered_model"].split("/")
    assert client.get_model_version(name, version).run_id == parents[0].info.run_id
    assert cluster.alive() == 2, "finesweep leaves a cluster it did not start running"

    # The registered model loads in a fresh process that knows only the server.
    load = ("import mlflow, pandas; m = mlflow.pyfunc.load_model('models:/spread/1'); "
            "print(list(m.predict(pandas.DataFrame({'text': ['a great movie', 'an awful day']}))['label']))")
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": server.uri, "HOME": str(tmp_path)})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    labels = eval(loaded.stdout.strip().splitlines()[-1])  # noqa: S307 - a list printed by the child above
    assert len(labels) == 2 and set(labels) <= {"negative", "neutral", "positive"}


@pytest.mark.timeout(600)
def test_a_sweep_submitted_as_a_ray_job_runs_on_the_cluster(cluster: RayCluster, server: MlflowServer,
                                                            tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    from e2e import runs

    project = tmp_path / "project"  # what `--working-dir .` uploads: here, just the sweep file
    project.mkdir()
    sweep(project, "submitted", SPREAD.replace("num_trials: 6", "num_trials: 3"))
    command = ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", ".", "--",
               "finesweep", "run", "submitted.yaml", "cluster=ray", "cluster.cpus_per_trial=1",
               "cluster.gpus_per_trial=0", f"tracking.uri={server.uri}", *base(tiny_model, tiny_csv, tmp_path)]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=480,
                            env=cluster.env(RAY_AUTH_MODE="token"))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in output, output[-3000:]
    # The job's log is not a terminal: plain progress lines, and the top trials with every value whole.
    assert re.search(r"\[\s*\d+s\] trial 0 started: optim\.lr=", output), output[-3000:]
    assert re.search(r"\[\s*\d+s\] trial \d completed, best 0\.\d{4} at epoch \d  \(\d/3 done\)", output)
    assert "Top trials by max val/accuracy" in output and "0.…" not in output
    logged = runs(server.uri, "submitted")
    assert len(logged["parents"]) == 1 and len(logged["children"]) == 3
    assert logged["parents"][0].info.status == "FINISHED"
    assert cluster.alive() == 2


PACKED = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: random, num_trials: 8, max_concurrent: 8, seed: 0}
scheduler: {kind: fifo, max_epochs: 2}
optim: {lr: 5.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 2.0e-2}
"""


def overlap(spans: List[Tuple[float, float]]) -> int:
    """The most spans open at one time."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


@pytest.mark.timeout(600)
def test_half_a_gpu_each_packs_four_trials_on_the_gpu_node(cluster: RayCluster, server: MlflowServer,
                                                           tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    file = sweep(tmp_path, "packed", PACKED)
    result = finesweep(["run", str(file), f"cluster.address={cluster.address}", "cluster.cpus_per_trial=0.25",
                        "cluster.gpus_per_trial=0.5", f"tracking.uri={server.uri}",
                        *base(tiny_model, tiny_csv, tmp_path)], tmp_path, cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    log = events(tmp_path, "shared")
    started = {e["number"]: e["time"] for e in log if e["kind"] == "trial_started" and e["phase"] == "search"}
    ended = {e["number"]: e["time"] for e in log if e["kind"] == "trial_ended" and e["number"] in started}
    placed = {e["number"]: e["node"] for e in log if e["kind"] == "trial_result" and e.get("node")}
    assert len(started) == 8 and set(ended) == set(started)
    assert {node.split("(")[-1].rstrip(")") for node in placed.values()} == {"127.0.0.3"}, "only the GPU node"
    most = overlap([(started[n], ended[n]) for n in started])
    assert 2 <= most <= 4, f"at most four half-GPU trials at a time on 2 GPUs, saw {most}"


SPREAD_WORKERS = """
objective: {metric: val/loss, mode: min}
search: {sampler: random, num_trials: 2, max_concurrent: 1, seed: 2}  # one at a time: the recipe's trial 0 is
scheduler: {kind: asha, max_epochs: 2, grace_period: 1, reduction_factor: 2}  # ASHA's first rung, 1's lr 0.044 fails it
optim: {lr: 5.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-4, high: 5.0e-2}
"""


def cpus_in_use(cluster: RayCluster) -> float:
    """The CPUs Ray counts as reserved on the whole cluster (`ray status`: ``Usage: 1.0/4.0 CPU``)."""
    status = subprocess.run([cluster.ray, "status", f"--address={cluster.address}"], capture_output=True, text=True,
                            env=cluster.env(RAY_AUTH_MODE="token"), timeout=60).stdout
    found = re.search(r"([\d.]+)/([\d.]+) CPU", status)
    assert found, status
    return float(found.group(1))


@pytest.mark.timeout(600)
def test_trials_of_two_workers_spread_over_the_nodes_and_a_stopped_one_leaves_nothing(
        cluster: RayCluster, server: MlflowServer, tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    file = sweep(tmp_path, "spreadworkers", SPREAD_WORKERS)
    result = finesweep(["run", str(file), f"cluster.address={cluster.address}", "cluster.workers_per_trial=2",
                        "cluster.cpus_per_worker=1", "cluster.placement=spread", "cluster.gpus_per_trial=0",
                        f"tracking.uri={server.uri}", *base(tiny_model, tiny_csv, tmp_path)], tmp_path, cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    log = events(tmp_path, "shared")
    placed = {e["number"]: e for e in log if e["kind"] == "trial_result" and e.get("worker_pids")}
    ended = {e["number"]: e["status"] for e in log if e["kind"] == "trial_ended"}
    assert sorted(placed) == [0, 1] and all(e["workers"] == 2 for e in placed.values())
    for number, event in placed.items():
        hosts = sorted(node.split("(")[-1].rstrip(")") for node in event["node"].split(", "))
        assert hosts == ["127.0.0.2", "127.0.0.3"], f"trial {number}'s two workers on two nodes: {event['node']}"
    stopped = [n for n, status in ended.items() if status == "early_stopped"]
    assert stopped, f"ASHA stopped no trial: {ended}"
    # The nodes are processes of this machine: a stopped trial's workers are gone, not idle in the cluster.
    for number in stopped:
        pids = [int(p) for p in placed[number]["worker_pids"].split(",")]
        assert not [p for p in pids if os.path.exists(f"/proc/{p}")], f"trial {number}'s workers still run"
    deadline = time.monotonic() + 30
    while cpus_in_use(cluster) > 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert cpus_in_use(cluster) == 0, "every trial's workers gave their CPUs back"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    children = [r for r in client.search_runs([client.get_experiment_by_name("spreadworkers").experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2, "one child run per trial, not per worker"
    assert {c.data.tags["finesweep.workers"] for c in children} == {"2"}
    assert all(len(c.data.tags["finesweep.node"].split(", ")) == 2 for c in children)
    assert cluster.alive() == 2


KEEP = """
objective: {metric: val/loss, mode: min}
search: {sampler: random, num_trials: 12, max_concurrent: 2, seed: 4}
scheduler: {kind: fifo, max_epochs: 2}
optim: {lr: 1.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-4, high: 5.0e-2}
"""


@pytest.mark.timeout(600)
def test_only_the_checkpoints_that_can_still_win_stay_on_disk(tmp_path: Path, tiny_model: Path,
                                                              tiny_csv: Path) -> None:
    from e2e import run_cli

    file = sweep(tmp_path, "keep", KEEP)
    result = run_cli(["run", str(file), "cluster.keep_checkpoints=2", *base(tiny_model, tiny_csv, tmp_path)],
                     tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    log = events(tmp_path, "shared")
    ends = {e["number"]: e for e in log if e["kind"] == "trial_ended"}
    ranking = sorted(((min(m["metrics"]["val/loss"] for m in log if m["kind"] == "trial_result"
                           and m["number"] == n), n) for n in ends))
    winner, runner_up = ranking[0][1], ranking[1][1]
    on_disk = {n for n, e in ends.items() if e["checkpoint"] and Path(e["checkpoint"]).is_dir()}
    assert on_disk == {winner, runner_up}, f"kept {sorted(on_disk)}, expected the best two {winner}, {runner_up}"
    deleted = {e["number"] for e in log if e["kind"] == "checkpoint_deleted"}
    assert deleted == set(ends) - {winner, runner_up}
    assert "checkpoints: 2 kept (cluster.keep_checkpoints=2)" in " ".join(result.stdout.split())


# id, overrides, the line expected; "no-token" runs with a HOME that holds no token.
BAD_CLUSTER = [
    ("unreachable", ["cluster.address=127.0.0.2:{closed}"],
     r"cluster\.address: cannot reach a Ray cluster at 127\.0\.0\.2:\d+ \(.*\)\. Start it \(ray start --head"),
    ("fits-no-node", ["cluster.address={address}", "cluster.gpus_per_trial=3", "tracking.uri={server}"],
     r"cluster\.cpus_per_trial=1, cluster\.gpus_per_trial=3: a trial fits on no node of the cluster; the largest "
     r"has 2 CPU\(s\) and 2 GPU\(s\)\."),
    ("workers-do-not-fit", ["cluster.address={address}", "cluster.workers_per_trial=3", "cluster.cpus_per_worker=2",
                            "tracking.uri={server}"],
     r"cluster\.workers_per_trial=3, 2 CPU\(s\) and 0 GPU\(s\) per worker: the cluster holds 2 such worker\(s\) at "
     r"once over its 2 node\(s\), so a trial could never start\. Lower cluster\.workers_per_trial to at most 2"),
    ("sqlite-on-two-nodes", ["cluster.address={address}"],
     r"tracking\.uri: sqlite:///.*mlflow\.db is a store on this machine only, and the cluster has 2 nodes\. Use an "
     r"MLflow server"),
    ("unwritable-storage", ["cluster.address={address}", "cluster.storage_path=/proc/finesweep",
                            "tracking.uri={server}"],
     r"cluster\.storage_path: cannot write /proc/finesweep \(.*\)\. Use a folder you can write"),
    ("no-token", ["cluster.address={address}", "tracking.uri={server}"],
     r"cluster\.address=127\.0\.0\.2:\d+: the Ray cluster at 127\.0\.0\.2:\d+ uses token authentication and no "
     r"valid token was found\. Get it on the head node \(ray get-auth-token\)"),
    ("ray-client", ["cluster.address=ray://127.0.0.2:10001"],
     r"cluster\.address: ray://127\.0\.0\.2:10001 is a Ray Client address; .* ray job submit"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case,overrides,message", BAD_CLUSTER, ids=[c[0] for c in BAD_CLUSTER])
def test_a_cluster_that_cannot_run_the_sweep_is_one_line_and_exit_2(
        cluster: RayCluster, server: MlflowServer, tmp_path: Path, tiny_model: Path, tiny_csv: Path,
        case: str, overrides: List[str], message: str) -> None:
    file = sweep(tmp_path, "bad", SPREAD)
    values = {"address": cluster.address, "closed": str(free_port()), "server": server.uri}
    extra: Dict[str, Any] = {"HOME": str(tmp_path / "no-token")} if case == "no-token" else {}
    given = [o.format(**values) for o in overrides]
    result = finesweep(["run", str(file), *base(tiny_model, tiny_csv, tmp_path), *given], tmp_path, cluster,
                       timeout=240, **extra)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert not (tmp_path / "shared" / "finesweep").exists() or not any((tmp_path / "shared" / "finesweep").iterdir()) \
        or "trial_started" not in json.dumps(events(tmp_path, "shared")), "no trial started"
    assert cluster.alive() == 2, "the cluster is left as it was"
