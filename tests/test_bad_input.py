"""Bad input, through the real `finesweep run` entry point: exit 2, one pinned line, before Ray or MLflow start.

Each row is something a user can get wrong (the config, the sweep file, the data, the bounds of the
search space). Ray, the MLflow store and the trials are booby-trapped: reaching any of them fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pytest

from finesweep import cli

HEAD = ("objective: {metric: val/accuracy, mode: max}\n"
        "search: {sampler: random, num_trials: 4}\n"
        "scheduler: {kind: fifo, max_epochs: 2}\n")
LR = "  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}\n"


def space(*lines: str, head: str = HEAD) -> str:
    return head + "space:\n" + "".join(f"  {line}\n" for line in lines)


FILES: Dict[str, bytes] = {
    "empty.csv": b"",
    "broken.parquet": b"PAR1 not really parquet",
    "one_class.csv": b"text,label\n" + b"good movie,pos\n" * 30,
    "scores.csv": b"text,label\n" + b"".join(f"good movie,{i % 4 + 0.5}\n".encode() for i in range(40)),
    "binary.yaml": b"\xff\xfe\x00objective",
}

TWO = ("objective:\n  - {metric: val/accuracy, mode: max}\n  - {metric: inference/latency_ms, mode: min}\n"
       "search: {sampler: random, num_trials: 4}\nscheduler: {kind: fifo, max_epochs: 2}\n")
ONE = "search: {sampler: random, num_trials: 4}\nscheduler: {kind: fifo, max_epochs: 2}\n"

# (id, sweep body, overrides, pinned message after "error: ")
CASES = [
    # --- several objectives and constraints (a multi-objective sweep) -------------------------------------
    ("cost-metric-that-does-not-exist",
     space(LR.strip(), head=TWO.replace("inference/latency_ms", "inference/energy_j")), [],
     r"bad\.yaml: objective\[1\]\.metric must be a metric every trial reports \(.*inference/latency_ms.*\), got "
     r"'inference/energy_j'\. Pick one of those\.$"),
    ("constraint-on-a-metric-the-task-does-not-report",
     space(LR.strip(), head="objective: {metric: val/accuracy, mode: max, constraints: {val/entity_f1: {min: 0.5}}}\n"
           + ONE), [],
     r"objective\.constraints\.val/entity_f1: val/entity_f1 is not reported for a classification task, got "
     r"val/entity_f1\. Use one of "),
    ("objective-mode-missing", space(LR.strip(), head=TWO.replace(", mode: min", "")), [],
     r"bad\.yaml: objective\[1\]\.mode is required, got \{'metric': 'inference/latency_ms'\}\. Write e\.g\. "
     r"\{metric: inference/latency_ms, mode: min\} \(mode: max or min\)\.$"),
    ("several-objectives-on-a-grid", space("optim.lr: {distribution: categorical, choices: [1.0e-4, 5.0e-5]}",
                                           head=TWO), ["search.sampler=grid", "search.num_trials=null"],
     r"bad\.yaml: search\.sampler cannot search 2 objectives: a grid runs every combination once whatever they "
     r"score, so it has no front to move towards, got grid\. Use search\.sampler=nsga2, tpe or random\.$"),
    ("a-constraint-on-a-grid", space("optim.lr: {distribution: categorical, choices: [1.0e-4, 5.0e-5]}",
                                     head="objective: {metric: val/accuracy, mode: max, constraints: "
                                          "{model/size_mb: {max: 100}}}\n" + ONE),
     ["search.sampler=grid", "search.num_trials=null"],
     r"bad\.yaml: search\.sampler cannot honour objective\.constraints \(a grid runs every combination once\), "
     r"got grid\. Use search\.sampler=tpe, nsga2 or random, or drop the constraints\.$"),
    # --- the recipe (the config's own values) and enqueued points must be values the space can produce -------
    ("recipe-outside-the-space", space("optim.lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-3}"), [],
     r"bad\.yaml: search\.start_from_config: the recipe's optim\.lr=5e-05 \(the composed config's own value\) is "
     r"not in space\.optim\.lr \(loguniform \[0\.0001, 0\.001\]\)\. Set optim\.lr to a value inside it, widen "
     r"space\.optim\.lr, or set search\.start_from_config=false\.$"),
    ("enqueued-point-off-the-step-grid", space("optim.warmup_ratio: {distribution: float, low: 0.0, high: 0.2, "
                                               "step: 0.05}"), ["search.enqueue=[{{optim.warmup_ratio:0.07}}]"],
     r"bad\.yaml: search\.enqueue\[0\]: optim\.warmup_ratio=0\.07 is not in space\.optim\.warmup_ratio \(float "
     r"\[0, 0\.2\] in steps of 0\.05\)\. Use a value inside the range, or widen space\.optim\.warmup_ratio\.$"),
    ("more-enqueued-points-than-trials", space(LR.strip()),
     ["search.enqueue=[{{optim.lr:1e-4}},{{optim.lr:2e-4}},{{optim.lr:3e-4}},{{optim.lr:4e-4}}]"],
     r"bad\.yaml: search\.enqueue: 5 configurations run first \(the recipe and search\.enqueue\), more than the "
     r"search's 4 trials, got num_trials=4\. Raise search\.num_trials to at least 5, or enqueue fewer\.$"),
    ("fold-searched", space("data.fold: {distribution: int, low: 0, high: 4}"), [],
     r"bad\.yaml: space\.data\.fold: data\.fold is set by model selection on its cross-validation runs "
     r"\(final\.cv_folds\), so it cannot be searched\. Remove it from space\.$"),
    ("cv-folds-one", space(LR.strip()), ["final.cv_folds=1"],
     r"final\.cv_folds must be 0 \(off\), a number of folds >= 2, or auto, got 1\. Use e\.g\. 5 or auto\.$"),
    # --- search-space bounds: values a sampler could propose that no trial could run -------------------------
    ("weight-decay-below-zero", space("optim.weight_decay: {distribution: uniform, low: -0.1, high: 0.1}"), [],
     r"bad\.yaml: space\.optim\.weight_decay: low=-0\.1 would make an invalid config: optim\.weight_decay must be "
     r">= 0, got -0\.1\. Use e\.g\. 0\.01\. Move low inside the valid range\.$"),
    ("warmup-step-reaches-one", space("optim.warmup_ratio: {distribution: float, low: 0.0, high: 1.0, step: 0.5}"),
     [], r"bad\.yaml: space\.optim\.warmup_ratio: high=1\.0 would make an invalid config: optim\.warmup_ratio must be "
         r"in \[0, 1\), got 1\.0\. Use e\.g\. 0\.1\. Move high inside the valid range\.$"),
    ("batch-size-zero", space("data.batch_size: {distribution: int, low: 0, high: 8}"), [],
     r"bad\.yaml: space\.data\.batch_size: low=0 would make an invalid config: data\.batch_size must be at least 1, "
     r"got 0\."),
    ("precision-lightning-does-not-know", space("trainer.precision: {distribution: categorical, "
                                                "choices: [32-true, 8-bit]}"), [],
     r"bad\.yaml: space\.trainer\.precision: trainer\.precision must be one of 32-true, 16-mixed, bf16-mixed, "
     r"16-true, bf16-true, 64-true, auto, got '8-bit'\. Use values of the config key's type\.$"),
    ("accelerator-gpu-without-gpus", space("trainer.accelerator: {distribution: categorical, choices: [cpu, gpu]}"),
     [], r"bad\.yaml: space\.trainer\.accelerator: choice 'gpu' would make an invalid config: trainer\.accelerator "
         r"needs cluster\.gpus_per_trial > 0 .*Remove that choice\.$"),
    ("label-smoothing-one", space("trainer.label_smoothing: {distribution: uniform, low: 0.0, high: 1.0}"), [],
     r"space\.trainer\.label_smoothing: high=1\.0 would make an invalid config: trainer\.label_smoothing must be "
     r"in \[0, 1\)"),
    ("llrd-above-one-in-a-branch", space("finetune.strategy: {distribution: categorical, choices: [full, freeze]}",
                                         "finetune.llrd: {distribution: uniform, low: 0.5, high: 1.5, "
                                         "when: {finetune.strategy: freeze}}"), [],
     r"space\.finetune\.llrd: high=1\.5 would make an invalid config: finetune\.llrd must be in \(0, 1\], got 1\.5\."),
    ("fractions-that-leave-no-training-data", space(
        "data.val_fraction: {distribution: categorical, choices: [0.1, 0.5]}",
        "data.test_fraction: {distribution: categorical, choices: [0.1, 0.5]}"), [],
     r"bad\.yaml: space: the combination data\.val_fraction=0\.5, data\.test_fraction=0\.5 would make an invalid "
     r"config: data\.val_fraction plus data\.test_fraction must leave training data \(sum < 1\), got 1\.0\. Lower "
     r"one of them\. Narrow the ranges \(or add a when condition\) so that every combination is valid\.$"),
    ("grid-point-breaks-a-rule", space("optim.schedule: {distribution: categorical, "
                                       "choices: [linear, warmup_stable_decay]}",
                                       "optim.warmup_ratio: {distribution: categorical, choices: [0.1, 0.95]}",
                                       head=HEAD.replace("random, num_trials: 4", "grid")), [],
     r"space: the combination optim\.schedule='warmup_stable_decay', optim\.warmup_ratio=0\.95 would make an invalid "
     r"config: optim\.warmup_ratio plus optim\.decay_ratio must fit in the budget"),
    ("freeze-deeper-than-the-model", space("finetune.strategy: {distribution: categorical, choices: [freeze]}",
                                           "finetune.freeze_layers: {distribution: int, low: 1, high: 9, "
                                           "when: {finetune.strategy: freeze}}"), ["search.start_from_config=false"],
     r"bad\.yaml: finetune\.freeze_layers must be <= the model's 2 encoder layers, got 9\. Lower it\.$"),
    ("lora-target-not-in-the-model", space("finetune.strategy: {distribution: categorical, choices: [lora, full]}",
                                           "finetune.lora.target_modules: {distribution: categorical, "
                                           "choices: [[query], [attention_q]], when: {finetune.strategy: lora}}"), [],
     r"bad\.yaml: finetune\.lora\.target_modules must name linear or convolution layers of the model, got "
     r"\['attention_q'\]"),
    ("loguniform-from-zero", space("optim.lr: {distribution: loguniform, low: 0, high: 0.1}"), [],
     r"bad\.yaml: space\.optim\.lr: loguniform needs low > 0, got low=0\. Use a positive bound such as 1e-6\.$"),
    ("typo-in-space-key", space("optim.weight_decy: {distribution: uniform, low: 0, high: 0.1}"), [],
     r"bad\.yaml: space\.optim\.weight_decy: unknown config key 'optim\.weight_decy'\. Did you mean "
     r"optim\.weight_decay\?$"),
    ("searching-the-scheduler", space("scheduler.max_epochs: {distribution: int, low: 1, high: 4}"), [],
     r"space\.scheduler\.max_epochs: scheduler describes the sweep itself, not a config value"),
    ("continuous-range-in-a-grid", space(LR.strip(), head=HEAD.replace("random, num_trials: 4", "grid")), [],
     r"space\.optim\.lr: the grid sampler needs a finite set of values, got a continuous loguniform range"),
    # --- config values and overrides ------------------------------------------------------------------------
    ("accelerator-typo", space(LR.strip()), ["trainer.accelerator=gpus"],
     r"bad\.yaml: trainer\.accelerator: Invalid value 'gpus', expected one of \[auto, cpu, gpu, cuda, mps\]\. "
     r"Use one of those\.$"),
    ("precision-typo", space(LR.strip()), ["trainer.precision=16"],
     r"trainer\.precision: Invalid value '16', expected one of \[32-true, 16-mixed"),
    ("schedule-typo", space(LR.strip()), ["optim.schedule=cosine_restarts"],
     r"optim\.schedule: Invalid value 'cosine_restarts', expected one of \[linear, cosine, cosine_with_restarts"),
    ("unknown-override-key", space(LR.strip()), ["optim.lrr=0.1"],
     r"bad\.yaml: optim\.lrr: not a config key\. Did you mean optim\.lr\?$"),
    ("added-unknown-key", space(LR.strip()), ["+trainer.precison=bf16-mixed"],
     r"bad\.yaml: trainer\.precison: not a config key\. Did you mean trainer\.precision\?$"),
    ("wrong-type", space(LR.strip()), ["data.batch_size=big"],
     r"data\.batch_size: Value 'big' of type 'str' could not be converted to Integer\. Give a value of that type\.$"),
    ("unknown-encoding", space(LR.strip()), ["data.encoding=utf-99"],
     r"bad\.yaml: data\.encoding must be a text encoding Python knows, got 'utf-99'\."),
    ("gpu-without-gpus", space(LR.strip()), ["trainer.accelerator=cuda"],
     r"trainer\.accelerator needs cluster\.gpus_per_trial > 0 \(Ray shows a trial only the GPUs it reserved\), got "
     r"cuda\. Set cluster\.gpus_per_trial=1, or trainer\.accelerator=auto\.$"),
    ("object-store-storage", space(LR.strip()), ["cluster.storage_path=s3://bucket/sweeps"],
     r"cluster\.storage_path must be a folder: the sweep's log is appended to and locked, which object stores "
     r"cannot do, got s3://bucket/sweeps\. Use a folder of a file system every node mounts"),
    ("no-checkpoint-kept", space(LR.strip()), ["cluster.keep_checkpoints=0"],
     r"cluster\.keep_checkpoints must be at least 1 \(the winner's\), got 0\. Use e\.g\. 3\.$"),
    ("grace-beyond-budget", space(LR.strip()), ["scheduler.grace_period=9"],
     r"scheduler\.grace_period must be between 1 and scheduler\.max_epochs \(2\), got 9\."),
    ("unreported-objective", space(LR.strip()), ["objective.metric=val/auroc"],
     r"objective\.metric must be a metric every trial reports .*, got 'val/auroc'\. Pick one of those\.$"),
    ("unknown-group-option", space(LR.strip()), ["model=gpt5"],
     r"Could not find 'model/gpt5'\. Available options in 'model': hub, llm, minilm, t5, vit\.$"),
    # --- the sweep file itself --------------------------------------------------------------------------------
    ("not-yaml", "objective: {metric: val/accuracy\nspace: [", [],
     r"^bad\.yaml: not a readable YAML file: .*\. Fix the syntax \(a sweep file is UTF-8 YAML\)\.$"),
    ("not-a-mapping", "- optim.lr\n- data.batch_size\n", [],
     r"^bad\.yaml: a sweep file must be a mapping \(objective:, search:, space: \.\.\.\), got list\."),
    ("space-not-a-mapping", HEAD + "space: [optim.lr]\n", [],
     r"^bad\.yaml: space must map config keys to distributions, got \['optim\.lr'\]\."),
    ("no-objective", "search: {sampler: random, num_trials: 2}\nspace:\n" + LR, [],
     r"bad\.yaml: objective\.metric: required, but no value is set\. Set it in the sweep file or on the command line "
     r"\(objective\.metric=\.\.\.\)\.$"),
    # --- the data ---------------------------------------------------------------------------------------------
    ("missing-file", space(LR.strip()), ["data.path=/nonexistent/train.csv"],
     r"bad\.yaml: data\.path: file not found, got /nonexistent/train\.csv\. Point data\.path at a CSV, JSONL or "
     r"Parquet file"),
    ("empty-file", space(LR.strip()), ["data.path={files}/empty.csv"],
     r"data\.path: cannot read .*/empty\.csv as csv \(EmptyDataError: No columns to parse from file\)\. Check that "
     r"the file is valid csv in utf-8\.$"),
    ("not-parquet", space(LR.strip()), ["data.path={files}/broken.parquet"],
     r"data\.path: cannot read .*/broken\.parquet as parquet \(Arrow\w+: .*\)\. Check that the file is valid "
     r"parquet\.$"),
    ("missing-column", space(LR.strip()), ["data.text_column=tweet"],
     r"data\.text_column: column 'tweet' not in .*tiny\.csv \(columns: text, label\)\. Set data\.text_column to one "
     r"of them\.$"),
    ("one-class", space(LR.strip()), ["data.path={files}/one_class.csv"],
     r"data\.label_column: column 'label' needs at least 2 classes, got \['pos'\]\."),
    ("accuracy-on-regression", space(LR.strip()), ["data.path={files}/scores.csv"],
     r"objective\.metric: val/accuracy is not reported for a regression task, got val/accuracy\. Use one of "
     r"train/loss, val/loss, val/rmse, val/pearson, or set data\.task=classification\.$"),
    ("unknown-task", space(LR.strip()), ["data.task=vision"],
     r"bad\.yaml: data\.task must name a task finesweep knows \(auto, classification, regression.*\), got 'vision'\. "
     r"Use one of those, or register yours with finesweep\.tasks\.register\.$"),
    ("regression-on-text-labels", space(LR.strip()), ["data.task=regression", "objective.metric=val/rmse",
                                                      "objective.mode=min"],
     r"data\.task: regression needs numeric labels, but column 'label' holds"),
    ("more-folds-than-rows", space(LR.strip()), ["final.cv_folds=100000"],
     r"bad\.yaml: final\.cv_folds: every fold needs a row of the \d+ train \+ validation rows, got "
     r"cv_folds=100000\. Use at most \d+ folds \(5 is usual\)\.$"),
    ("too-few-samples", space(LR.strip()), ["data.max_samples=5"],
     r"data\.max_samples must be at least 10 or null, got 5\. Use null for every row\.$"),
    # --- images (the model is a tiny ViT) -------------------------------------------------------------------------
    ("truncated-image", space(LR.strip()), ["data.path={files}/truncated", "model.name_or_path={files}/vit"],
     r"bad\.yaml: data\.path: image .*/truncated/square/000\.jpg is truncated \(its JPEG data ends early\)\. "
     r"Replace or remove the file\(s\)\.$"),
    ("empty-class-folder", space(LR.strip()), ["data.path={files}/empty_class", "model.name_or_path={files}/vit"],
     r"data\.path: class folder .*/empty_class/zebra holds no images \(\.jpg, .*\), got an empty folder\. Add "
     r"images to it or remove it\.$"),
    ("class-missing-from-val", space(LR.strip()), ["data.path={files}/no_val_stripes",
                                                   "model.name_or_path={files}/vit"],
     r"data\.path: class 'stripes' has no images in val/ of .*, got classes disc, square there\. Add images of "
     r"every class to every split folder\.$"),
    ("image-path-outside", space(LR.strip()), ["data.path={files}/outside/labels.csv",
                                               "model.name_or_path={files}/vit"],
     r"data\.image_column: data row 0 of column 'image' points outside the data folder .*, got '\.\./escape\.png'\. "
     r"Keep the images in the table's folder"),
    ("model-without-tokenizer", space(LR.strip()), ["model.name_or_path={files}"],
     r"model\.name_or_path: cannot read the model config of '.*' \(.*\)\. Point it at a Hugging Face model folder"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pandas as pd

    from vision import build_tiny_vit, image_folder, image_table, split_folders

    folder = tmp_path_factory.mktemp("bad-files")
    for name, content in FILES.items():
        (folder / name).write_bytes(content)
    build_tiny_vit(folder / "vit")
    victim = image_folder(folder / "truncated", per_class=5) / "square" / "000.jpg"
    victim.write_bytes(victim.read_bytes()[:-40])
    (image_folder(folder / "empty_class", per_class=5) / "zebra").mkdir()
    split_folders(folder / "no_val_stripes", {"train": 5, "val": 2})
    for image in (folder / "no_val_stripes" / "val" / "stripes").iterdir():
        image.unlink()
    (folder / "no_val_stripes" / "val" / "stripes").rmdir()
    table = image_table(folder / "outside", per_class=5)
    (folder / "escape.png").write_bytes((folder / "outside" / "images" / "disc-0.png").read_bytes())
    frame = pd.read_csv(table)
    frame.loc[0, "image"] = "../escape.png"
    frame.to_csv(table, index=False)
    return folder


@pytest.fixture()
def no_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray, the MLflow store and the trainable fail the test if anything reaches them."""
    import ray

    from finesweep import runner, tracking

    def reached(what: str) -> object:
        def fail(*args: object, **kwargs: object) -> None:
            pytest.fail(f"{what} was reached: bad input must be refused before it")
        return fail

    monkeypatch.setattr(ray, "init", reached("ray.init"))
    monkeypatch.setattr(runner, "ray_session", reached("the Ray session"))
    monkeypatch.setattr(tracking.Projector, "prepare", reached("the MLflow store"))
    monkeypatch.setattr(runner, "run", reached("the sweep runner"))


def run_cli(args: List[str], capsys: pytest.CaptureFixture) -> tuple:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("body,overrides,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_pinned_line_before_anything_starts(
        body: str, overrides: List[str], message: str, tmp_path: Path, files: Path, tiny_model: Path,
        tiny_csv: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, no_trials: None) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(body)
    base = [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
            "data.max_samples=null", "data.max_length=16"]
    code, out, err = run_cli(["run", str(sweep), *base, *(o.format(files=files) for o in overrides)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, out + err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in out + err
    assert _search(message, lines[0][len("error: "):]), f"\n{lines[0]}\ndoes not match\n{message}"
    assert not (tmp_path / "mlruns").exists(), "no MLflow store, no Ray log may be created"


def test_a_binary_sweep_file_is_one_line(tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture, no_trials: None) -> None:
    monkeypatch.chdir(files)
    code, _, err = run_cli(["run", str(files / "binary.yaml")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert _search(r"^error: binary\.yaml: not a readable YAML file: .*\(a sweep file is UTF-8 YAML\)\.$", err.strip())


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def _search(pattern: str, text: str) -> Optional[object]:
    import re

    return re.search(pattern, text)
