"""``search.sampler: auto`` (the default): a Gaussian process on a flat space with one objective, TPE where a prior,
several objectives, constraints or conditional keys need it; settled once, when the sweep is composed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from finesweep.config import Mode, ObjectiveConfig, Sampler, SearchConfig
from finesweep.config.compose import compose, stored
from finesweep.config.sampler_choice import chosen_sampler
from finesweep.config.schema import Bound, ObjectiveTerm
from finesweep.config.space import Distribution, Param

ROOT = Path(__file__).resolve().parents[2]


def flat_demo(tmp_path: Path, **search: Any) -> Path:
    """The demo sweep without its conditional keys (strategy and what hangs on it), ``search`` fields changed."""
    document: Dict[str, Any] = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    document["space"] = {k: v for k, v in document["space"].items() if "when" not in v and k != "finetune.strategy"}
    document["search"] = {k: v for k, v in {**document["search"], **search}.items() if v is not None}
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_auto_is_the_default_and_settles_to_a_gp_on_a_flat_space_with_one_objective(tmp_path: Path) -> None:
    assert SearchConfig().sampler is Sampler.auto
    sweep = compose(str(flat_demo(tmp_path, sampler=None)), [])
    assert sweep.config.search.sampler is Sampler.gp
    assert "sampler: auto" in sweep.yaml_text, "the journal keeps what was written; a resume settles it again"
    assert stored(sweep.yaml_text, sweep.sweep_file, []).config.search.sampler is Sampler.gp


def test_auto_is_tpe_where_a_gp_does_not_serve(tmp_path: Path) -> None:
    assert compose("demo", ["search.sampler=auto"]).config.search.sampler is Sampler.tpe, "conditional keys"
    flat = str(flat_demo(tmp_path, sampler="auto"))
    assert compose(flat, ["search.prior=config"]).config.search.sampler is Sampler.tpe, "a prior weighs TPE"
    assert compose(flat, ["search.sampler=random"]).config.search.sampler is Sampler.random, "a choice is kept"
    assert compose(flat, ["search.sampler=gp"]).config.search.sampler is Sampler.gp


LR = Param("optim.lr", Distribution.loguniform, 1e-5, 1e-2)


@pytest.mark.parametrize(("objective", "expected"), [
    (None, Sampler.gp),
    (ObjectiveConfig("val/accuracy", Mode.max), Sampler.gp),
    (ObjectiveConfig("val/accuracy", Mode.max, also=[ObjectiveTerm("inference/latency_ms", Mode.min)]), Sampler.tpe),
    (ObjectiveConfig("val/accuracy", Mode.max, constraints={"inference/latency_ms": Bound(max=5.0)}), Sampler.tpe),
], ids=["no-objective", "one", "several", "constrained"])
def test_several_objectives_or_constraints_keep_tpe(objective: Any, expected: Sampler) -> None:
    assert chosen_sampler(SearchConfig(), [LR], objective) is expected
