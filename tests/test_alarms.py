"""Training alarms: finite runs that blew up or ended at chance are named, healthy ones are not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from da_framework.cli import app
from da_framework.train.alarms import alarms_markdown, record_alarms, training_alarms


def _history(values: list[float], every: int = 50) -> list[dict[str, float]]:
    return [{"step": every * (i + 1), "loss/cross_entropy": v, "loss": v + 1.0} for i, v in enumerate(values)]


def test_healthy_run_has_no_alarm() -> None:
    # Starts near log 10 = 2.303, learns; an eval entry without the key is ignored.
    history = _history([2.29, 1.4, 0.9, 0.5]) + [{"step": 200, "target_test_accuracy": 0.8}]
    assert training_alarms(history, 10) == []


def test_blow_up_names_the_worst_step() -> None:
    # The AFN-on-MNIST shape: 2.1, then 34 at step 100, recovering below chance by the end.
    alarms = training_alarms(_history([2.1, 34.1, 3.9, 0.4]), 10)
    assert len(alarms) == 1 and alarms[0].startswith("blow-up: labelled cross-entropy 34.1 at step 100")
    assert "6.91" in alarms[0]  # 3 x log 10


def test_threshold_boundaries_in_units_of_log_k() -> None:
    chance = math.log(2)
    # Just under and just over 3 log 2 = 2.079 (a spike), ending well fitted.
    assert training_alarms(_history([0.6, 3 * chance - 1e-3, 0.3]), 2) == []
    assert len(training_alarms(_history([0.6, 3 * chance + 1e-3, 0.3]), 2)) == 1
    # Just under and just over 0.95 log 2 at the end.
    assert training_alarms(_history([0.69, 0.95 * chance - 1e-3]), 2) == []
    end = training_alarms(_history([0.69, 0.95 * chance + 1e-3]), 2)
    assert len(end) == 1 and end[0].startswith("at chance or worse") and "step 100" in end[0]
    # Both rules at once; non-finite entries are left to the finite-check.
    both = training_alarms(_history([2.3, float("nan"), 40.0, 25.0]), 10)
    assert [a.split(":")[0] for a in both] == ["blow-up", "at chance or worse"]
    assert "40 at step 150" in both[0]


def test_one_class_collapse_is_named_even_when_the_labelled_loss_is_low() -> None:
    history = _history([2.2, 0.3, 0.05])  # the source side trains fine (ADDA's frozen source model)
    collapsed = [0.0, 0.0, 1.0, 0.0, 0.004]
    alarms = training_alarms(history, 5, per_class_accuracy=collapsed)
    assert len(alarms) == 1 and alarms[0].startswith("one class: the final model predicts class 2")
    # Just inside the thresholds: no alarm; a second class above 0.01 or the top below 0.99: none either.
    assert training_alarms(history, 5, per_class_accuracy=[0.011, 0.0, 1.0, 0.0, 0.0]) == []
    assert training_alarms(history, 5, per_class_accuracy=[0.0, 0.0, 0.989, 0.0, 0.0]) == []
    assert training_alarms(history, 5, per_class_accuracy=[0.8, 0.7, 0.9, 0.6, 0.75]) == []
    record = {"metrics": {"target_test_per_class_accuracy": collapsed}, "history": history}
    assert record_alarms(record) == alarms
    # A record that stored older alarms gets the current rules' too, without repeats.
    assert record_alarms({**record, "alarms": ["stored", alarms[0]]}) == ["stored", alarms[0]]


def test_record_alarms_reads_k_from_the_per_class_accuracy() -> None:
    history = _history([0.5, 0.7])  # 0.7 > 0.95 log 2 = 0.658 but < 0.95 log 10
    binary = {"metrics": {"target_test_per_class_accuracy": [0.5, 0.5]}, "history": history}
    ten = {"metrics": {"target_test_per_class_accuracy": [0.1] * 10}, "history": history}
    assert len(record_alarms(binary)) == 1 and record_alarms(ten) == []
    assert record_alarms({"metrics": {}, "history": history}) == []  # no K: a diverged/federated record
    assert record_alarms({"metrics": {}, "alarms": ["stored"]}) == ["stored"]
    assert record_alarms({**ten, "alarms": ["stored"]}) == ["stored"]


def test_alarms_markdown_lists_only_flagged_runs() -> None:
    ok = {"config": {"method": "dann", "seed": 0}, "metrics": {"target_test_accuracy": 0.9,
          "target_test_per_class_accuracy": [0.9] * 10}, "history": _history([2.2, 0.3])}
    bad = {"config": {"method": "afn", "seed": 1}, "metrics": {"target_test_accuracy": 0.111,
           "target_test_per_class_accuracy": [0.1] * 10}, "history": _history([2.1, 34.0, 26.0])}
    assert alarms_markdown([ok]) == []
    md = alarms_markdown([ok, bad])
    rows = [line for line in md if line.startswith("| afn")]
    assert len(rows) == 2 and all("0.111" in r for r in rows) and not any("dann" in line for line in md)


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    # Source-only LeNet on the embedded digits at learning rate 3: the losses stay finite and the
    # classifier ends above 0.95 log 10 (measured 2.73 at step 40 on two CPUs' rounding).
    out = tmp_path_factory.mktemp("alarm_run")
    result = CliRunner().invoke(app, ["run", "digits_rotate", "-m", "source_only", "--seed", "0", "--steps", "40",
                                      "--set", "learning_rate=3.0", "--set", "log_every=10", "--results-dir", str(out)])
    assert result.exit_code == 0, result.output
    (path,) = Path(out).rglob("seed0.json")
    return result.output, json.loads(path.read_text())


def test_da_run_prints_and_records_the_alarm(collapsed_run: tuple[str, dict]) -> None:
    output, record = collapsed_run
    assert record.get("status") != "diverged" and record["alarms"]
    per_class = record["metrics"]["target_test_per_class_accuracy"]
    assert record["alarms"] == training_alarms(record["history"], 10, per_class_accuracy=per_class)
    assert any(a.startswith("at chance or worse") for a in record["alarms"])
    assert "alarm:" in output and "alarms" in output  # the line and the table column
    assert record["metrics"]["target_test_accuracy"] < 0.2
