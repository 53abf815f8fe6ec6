"""`da report` tables from synthetic records: mean ± std, bold best, average column, selection."""

import json
import statistics

from typer.testing import CliRunner

from da_framework.bench.report import (
    grid_table,
    headline_table,
    selection_table,
    summary_table,
    to_latex,
    to_markdown,
    write_report,
)
from da_framework.cli import app


def _rec(method, target, seed, acc, lr=1e-3, sval=0.9):
    return {
        "format": "da_framework.run/1",
        "config": {"method": method, "source": "digits/source", "target": target, "seed": seed, "learning_rate": lr},
        "seed": seed,
        "hparams": {"learning_rate": lr},
        "metrics": {"target_test_accuracy": acc, "source_val_accuracy": sval},
        "selection": {"source_val_accuracy": sval, "target_oracle_accuracy": acc, "iwcv_risk": 1.0, "dev_risk": 1.0,
                      "target_entropy": 0.5, "snd": 3.0},
        "analysis": {"proxy_a_distance": 1.0},
        "history": [{"step": 5, "source_train_accuracy": 0.5}, {"step": 10, "source_train_accuracy": 0.8, **{"target_test_accuracy": acc}}],
    }


def _records():
    return [
        _rec("a", "digits/rotate", 0, 0.50), _rec("a", "digits/rotate", 1, 0.60),
        _rec("a", "digits/blur", 0, 0.90), _rec("a", "digits/blur", 1, 0.80),
        _rec("b", "digits/rotate", 0, 0.70), _rec("b", "digits/rotate", 1, 0.80),
        _rec("b", "digits/blur", 0, 0.70), _rec("b", "digits/blur", 1, 0.60),
    ]


def test_summary_table_mean_std_and_bold():
    t = summary_table("t", {"x": {"c": [0.5, 0.7]}, "y": {"c": [0.4]}}, ["c"])
    assert t.rows[0] == ["x", "60.0 ± 14.1"] and t.rows[1] == ["y", "40.0 (n=1)"]  # fewer seeds: marked
    assert t.bold == [[False, True], [False, False]]
    t = summary_table("t", {"x": {"c": [0.5]}, "y": {"c": [0.4]}}, ["c"], better="min")
    assert t.bold == [[False, False], [False, True]]


def test_a_cell_with_missing_seeds_is_marked_and_never_bold():
    """The audit's case: a 1-seed row with the highest mean was bolded in a 2-seed table."""
    t = summary_table("t", {"full": {"c": [0.5, 0.6]}, "lucky": {"c": [0.9]}}, ["c"])
    assert t.rows == [["full", "55.0 ± 7.1"], ["lucky", "90.0 (n=1)"]]
    assert t.bold == [[False, True], [False, False]] and "(n=k): over k of the 2 seeds" in t.note
    assert to_markdown(t).count("**") == 2  # only the full row's cell is bold


def test_headline_table_values_bold_and_average():
    t = headline_table(_records())
    assert t.header == ["method", "digits/source→rotate", "digits/source→blur", "avg"]
    a, b = t.rows
    assert a[1] == f"55.0 ± {100 * statistics.stdev([0.5, 0.6]):.1f}" and b[1] == f"75.0 ± {100 * statistics.stdev([0.7, 0.8]):.1f}"
    # avg per seed over pairs: a: (0.5+0.9)/2=0.7, (0.6+0.8)/2=0.7 -> 70.0 ± 0.0; b: 0.7, 0.7 -> 70.0 ± 0.0
    assert a[3] == "70.0 ± 0.0" and b[3] == "70.0 ± 0.0"
    assert t.bold[0] == [False, False, True, True] and t.bold[1] == [False, True, False, True]
    md = to_markdown(t)
    assert "| b | **75.0 ± 7.1** | 65.0 ± 7.1 | **70.0 ± 0.0** |" in md
    tex = to_latex(t)
    assert r"\textbf{75.0 $\pm$ 7.1}" in tex and r"digits/source$\to$rotate" in tex


def test_headline_selects_grid_point_by_validator():
    recs = [_rec("a", "digits/rotate", 0, 0.2, lr=1e-3, sval=0.9), _rec("a", "digits/rotate", 0, 0.8, lr=1e-2, sval=0.5)]
    assert headline_table(recs, "source_val_accuracy").rows[0][1] == "20.0"
    assert headline_table(recs, "target_oracle_accuracy").rows[0][1] == "80.0"
    sel = selection_table(recs)
    col = sel.header.index("target_oracle_accuracy †")
    assert sel.rows[0][col] == "80.0" and sel.rows[0][sel.header.index("source_val_accuracy")] == "20.0"


def test_report_command_writes_files(tmp_path):
    for i, r in enumerate(_records()):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    written = write_report(tmp_path)
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.tex").exists()
    assert any(p.suffix == ".png" and p.exists() for p in written)
    md = (tmp_path / "report.md").read_text()
    assert "Headline model selection: `source_val_accuracy`" in md and "ORACLE" in md
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no results folder" in r.output


def test_report_of_a_partial_sweep_where_a_method_lacks_a_pair(tmp_path):
    """A sweep stopped half-way: method 'c' ran on rotate only; the report must still be written."""
    for i, r in enumerate([*_records(), _rec("c", "digits/rotate", 0, 0.4)]):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    write_report(tmp_path)
    assert "| c " in (tmp_path / "report.md").read_text()


def test_loss_weight_grid_points_are_one_method_in_the_report():
    """Records of a weight grid (config.method differs per point) group under sweep_method."""
    recs = [_rec("cross_entropy + 0.1*dann", "digits/rotate", 0, 0.2, sval=0.9),
            _rec("cross_entropy + 3.0*dann", "digits/rotate", 0, 0.8, sval=0.5)]
    for r in recs:
        r["sweep_method"] = "dann"
    t = headline_table(recs, "source_val_accuracy")
    assert [row[0] for row in t.rows] == ["dann"] and t.rows[0][1] == "20.0"
    assert headline_table(recs, "target_oracle_accuracy").rows[0][1] == "80.0"


def test_grid_table_lists_every_grid_point_without_selection():
    recs = [_rec("a", "digits/rotate", s, acc, lr=lr) for s, (lr, acc) in enumerate([(1e-3, 0.2), (1e-2, 0.8)])]
    recs += [_rec("a", "digits/rotate", s, acc, lr=lr) for s, (lr, acc) in enumerate([(1e-2, 0.6), (1e-3, 0.4)])]
    t = grid_table(recs)
    rows = {row[0]: row[1] for row in t.rows}
    # lr=1e-3: seeds 0 and 1 -> 0.2 and 0.4; lr=1e-2: seeds 1 and 0 -> 0.8 and 0.6
    assert rows == {"a @ learning_rate=0.001": f"30.0 ± {100 * statistics.stdev([0.2, 0.4]):.1f}",
                    "a @ learning_rate=0.01": f"70.0 ± {100 * statistics.stdev([0.8, 0.6]):.1f}"}
