"""Composition and validation: every shipped sweep and conf option, and every bad config value."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from finesweep.config import Mode, Precision, Sampler, Schedule, preflight
from finesweep.config.compose import compose, project_dir
from finesweep.config.overrides import with_overrides
from finesweep.errors import ConfigError, UserError

ROOT = project_dir()
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
OPTIONS = sorted((p.parent.name, p.stem) for p in (ROOT / "conf").glob("*/*.yaml"))


def test_the_checkout_ships_sweeps_and_options() -> None:
    assert "demo" in SWEEPS
    assert {group for group, _ in OPTIONS} >= {"model", "data", "optim", "trainer", "tracking", "cluster"}


OFFLINE_ONLY = {
    # hub ids cannot be read offline (conftest sets HF_HUB_OFFLINE=1): the check says so in one line
    "model_choice": r"sweeps/model_choice\.yaml: model\.name_or_path: cannot read the model config of "
                    r"'distilbert-base-uncased' \(.*\)\. Point it at a Hugging Face model folder",
}


@pytest.fixture(scope="module")
def own_data(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[str]]:
    """Sweeps whose data (and hub model) is the user's: tiny local stand-ins, as a user's overrides give them."""
    from lm_models import build_tiny_llama, build_tiny_t5, write_prompt_csv, write_source_target_csv
    from ner_data import build_tiny_ner_bert, make_sentences, write_conll
    from vision import build_tiny_vit, image_folder

    root = tmp_path_factory.mktemp("own-data")
    return {"vision": [f"data.path={image_folder(root / 'images', per_class=10)}",
                       f"model.name_or_path={build_tiny_vit(root / 'vit')}", "finetune.freeze_layers=1"],
            "ner": [f"data.path={write_conll(root / 'ner.conll', make_sentences(60, seed=0))}",
                    f"model.name_or_path={build_tiny_ner_bert(root / 'bert')}"],
            "llm_lora": [f"data.path={write_prompt_csv(root / 'pairs.csv', rows=60)}",
                         f"model.name_or_path={build_tiny_llama(root / 'llama')}"],
            "summarise": [f"data.path={write_source_target_csv(root / 'sources.csv', rows=60)}",
                          f"model.name_or_path={build_tiny_t5(root / 't5')}"]}


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_shipped_sweep_composes_and_validates(sweep: str, own_data: Dict[str, List[str]]) -> None:
    """What `finesweep show` checks: every searched value, the data of every variant, every model variant."""
    from finesweep.config.compose import blame

    composed = compose(sweep, own_data.get(sweep, []))  # every value the space can produce is checked
    assert composed.config.name == sweep
    assert composed.params, "a shipped sweep searches something"
    with blame(composed.sweep_file):
        preflight.check_data(composed.config, composed.params)
    if sweep in OFFLINE_ONLY:
        with pytest.raises(ConfigError, match=OFFLINE_ONLY[sweep]), blame(composed.sweep_file):
            preflight.check_model(composed.config, composed.params)
    else:
        preflight.check_model(composed.config, composed.params)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_conf_option_composes(group: str, option: str, tiny_model: Path, tiny_csv: Path,
                                    tmp_path: Path) -> None:
    sweep = tmp_path / "minimal.yaml"
    sweep.write_text("objective: {metric: val/loss, mode: min}\nsearch: {num_trials: 2}\n"
                     "space:\n  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}\n")
    required = {("model", "hub"): [f"model.name_or_path={tiny_model}"],
                ("data", "csv"): [f"data.path={tiny_csv}"], ("data", "conll"): [f"data.path={tiny_csv}"],
                ("data", "images"): [f"data.path={tiny_csv}"], ("data", "sft"): [f"data.path={tiny_csv}"],
                ("data", "summaries"): [f"data.path={tiny_csv}"]}
    composed = compose(str(sweep), [f"{group}={option}", *required.get((group, option), [])])
    section = yaml.safe_load((ROOT / "conf" / group / f"{option}.yaml").read_text()) or {}
    for key, value in section.items():
        if isinstance(value, (int, float, str)) and "${" not in str(value) and value != "???":
            actual = getattr(getattr(composed.config, group), key)
            assert getattr(actual, "value", actual) == value, f"{group}.{key}"


def test_demo_matches_the_documented_sweep() -> None:
    config = compose("demo", []).config
    assert config.objective.metric == "val/accuracy" and config.objective.mode is Mode.max
    assert config.search.sampler is Sampler.tpe and config.search.num_trials >= 8
    assert Path(config.model.name_or_path, "config.json").is_file()


def test_overrides_apply_last_and_paths_become_absolute(tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_csv.parent)
    config = compose("demo", ["optim.lr=3e-5", "search.num_trials=32", f"data.path={tiny_csv.name}",
                              "data.label_column=label", "optim.schedule=cosine"]).config
    assert config.optim.lr == 3e-5 and config.search.num_trials == 32
    assert config.data.path == str(tiny_csv) and config.optim.schedule is Schedule.cosine
    assert config.tracking.uri == f"sqlite:///{tiny_csv.parent / 'mlruns' / 'mlflow.db'}"
    assert config.experiment_name == "demo"


def test_sweep_given_by_path(tmp_path: Path) -> None:
    sweep = tmp_path / "mine.yaml"
    sweep.write_text((ROOT / "sweeps" / "demo.yaml").read_text())
    assert compose(str(sweep), []).config.name == "mine"


def test_with_overrides_casts_and_copies() -> None:
    config = compose("demo", []).config
    changed = with_overrides(config, {"optim.schedule": "cosine", "optim.lr": 1, "data.batch_size": 16.0,
                                      "trainer.precision": "bf16-mixed"})
    assert changed.optim.schedule is Schedule.cosine and changed.optim.lr == 1.0
    assert changed.trainer.precision is Precision["bf16-mixed"]
    assert isinstance(changed.data.batch_size, int) and config.optim.schedule is Schedule.linear


def test_with_overrides_runs_the_section_rules() -> None:
    config = compose("demo", []).config
    with pytest.raises(ConfigError, match=r"optim\.weight_decay must be >= 0, got -0\.1\. Use e\.g\. 0\.01\."):
        with_overrides(config, {"optim.weight_decay": -0.1})
    with pytest.raises(ConfigError, match=r"trainer\.accelerator needs cluster\.gpus_per_trial > 0"):
        with_overrides(config, {"trainer.accelerator": "gpu"})


BAD: List[tuple] = [
    ("unknown-sampler", ["search.sampler=bayes"],
     r"sweeps/demo\.yaml: search\.sampler: Invalid value 'bayes', expected one of "
     r"\[grid, random, tpe, gp, nsga2, auto\]\. Use one of those\."),
    ("unknown-scheduler", ["scheduler.kind=hyperband"],
     r"scheduler\.kind: Invalid value 'hyperband', expected one of \[asha, fifo\]"),
    ("bad-mode", ["objective.mode=maximize"],
     r"objective\.mode: Invalid value 'maximize', expected one of \[max, min\]"),
    ("grace-gt-max", ["scheduler.grace_period=5", "scheduler.max_epochs=3"],
     r"sweeps/demo\.yaml: scheduler\.grace_period must be between 1 and scheduler\.max_epochs \(3\), got 5\. "
     r"Lower grace_period or raise max_epochs\."),
    ("reduction-lt-2", ["scheduler.reduction_factor=1"],
     r"sweeps/demo\.yaml: scheduler\.reduction_factor must be >= 2, got 1\.0\. Use 2, 3 or 4\."),
    ("unreported-metric", ["objective.metric=val/auroc"],
     r"sweeps/demo\.yaml: objective\.metric must be a metric every trial reports \(train/loss, val/loss, "
     r"val/accuracy, val/f1_macro, val/rmse, val/pearson, .*val/entity_f1.*val/top5_accuracy.*\), got 'val/auroc'\. "
     r"Pick one of those\."),
    ("no-num-trials", ["search.num_trials=null"],
     r"search\.num_trials is required for sampler tpe, got None\. Set search\.num_trials"),
    ("bad-fractions", ["data.val_fraction=0.6", "data.test_fraction=0.5"],
     r"data\.val_fraction plus data\.test_fraction must leave training data"),
    ("unknown-config-key", ["optim.momentum=0.9"],
     r"optim\.momentum: not a config key\. Keys under optim: lr, weight_decay, warmup_ratio, schedule, "),
    ("typo-config-key", ["optim.weight_decy=0.1"], r"optim\.weight_decy: not a config key\. Did you mean "
                                                    r"optim\.weight_decay\?"),
    ("added-config-key", ["+optim.momentum=0.9"], r"optim\.momentum: not a config key\. Keys under optim: "),
    ("added-typo-key", ["+trainer.precison=16-mixed"],
     r"trainer\.precison: not a config key\. Did you mean trainer\.precision\?"),
    ("typo-sweep-key", ["search.num_trial=3"], r"search\.num_trial: not a config key\. Did you mean "
                                               r"search\.num_trials\?"),
    ("unknown-group-option", ["model=gpt5"],
     r"In 'config': Could not find 'model/gpt5'\. Available options in 'model': hub, llm, minilm, t5, vit\."),
    ("wrong-type", ["data.batch_size=big"],
     r"data\.batch_size: Value 'big' of type 'str' could not be converted to Integer\. Give a value of that type\."),
    ("bad-precision", ["trainer.precision=8-bit"],
     r"trainer\.precision: Invalid value '8-bit', expected one of \[32-true, 16-mixed, bf16-mixed, 16-true, "
     r"bf16-true, 64-true, auto\]\. Use one of those\."),
    ("bad-accelerator", ["trainer.accelerator=gpus"],
     r"trainer\.accelerator: Invalid value 'gpus', expected one of \[auto, cpu, gpu, cuda, mps\]"),
    ("bad-schedule", ["optim.schedule=cosine_restarts"],
     r"optim\.schedule: Invalid value 'cosine_restarts', expected one of \[linear, cosine, cosine_with_restarts, "),
    ("gpu-without-gpus", ["trainer.accelerator=gpu"],
     r"trainer\.accelerator needs cluster\.gpus_per_trial > 0 .*, got gpu\. Set cluster\.gpus_per_trial=1"),
    ("bad-encoding", ["data.encoding=utf-99"],
     r"data\.encoding must be a text encoding Python knows, got 'utf-99'\. Use e\.g\. utf-8, latin-1 or cp1252\."),
    ("wsd-too-long", ["optim.schedule=warmup_stable_decay", "optim.warmup_ratio=0.5", "optim.decay_ratio=0.6"],
     r"optim\.warmup_ratio plus optim\.decay_ratio must fit in the budget \(sum <= 1\) for warmup_stable_decay, "
     r"got 1\.1"),
]


@pytest.mark.parametrize("overrides,message", [(o, m) for _, o, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_config_is_one_line_naming_file_and_key(overrides: List[str], message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        compose("demo", overrides)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("sweeps/demo.yaml: "), "every message names the sweep file first"


def test_grid_with_mismatched_num_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "g.yaml"
    sweep.write_text("objective: {metric: val/loss, mode: min}\nsearch: {sampler: grid, num_trials: 5}\n"
                     "space:\n  data.batch_size: {distribution: categorical, choices: [8, 16]}\n")
    with pytest.raises(ConfigError, match=r"search\.num_trials: the grid has 2 combinations and runs each once, "
                                          r"got num_trials=5\. Remove num_trials or set it to 2\."):
        compose(str(sweep), [])


def test_unknown_key_in_sweep_body(tmp_path: Path) -> None:
    sweep = tmp_path / "typo.yaml"
    sweep.write_text("objective: {metric: val/loss, mode: min}\nsearch: {num_trials: 2}\noptim: {lrr: 0.1}\n"
                     "space:\n  optim.lr: {distribution: uniform, low: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: optim\.lrr: not a config key\. Did you mean optim\.lr\?"):
        compose(str(sweep), [])


def test_missing_sweep_lists_known_ones() -> None:
    with pytest.raises(UserError, match=r"sweep 'nope' not found in .*sweeps\. Use one of: .*demo"):
        compose("nope", [])
