"""DomainBed's three model-selection rules on hand-made records, checked by hand, and end to end."""

import pytest

from da_framework.bench.dg_selection import Pick, dg_tables, index_runs, rule_table, select
from da_framework.errors import UserError


def _record(source, target, hparams, history, method="cross_entropy", seed=0):
    return {"config": {"source": source, "target": target, "method": method}, "seed": seed, "hparams": hparams,
            "history": [{"step": s, **h} for s, h in history]}


def _main(hp, evals):
    """A run trained on B,C and tested on A: evals = [(step, source_val, target_test, target_val)]."""
    return _record("B,C", "A", hp, [(s, {"source_val_accuracy": sv, "target_test_accuracy": tt, "target_val_accuracy": tv})
                                    for s, sv, tt, tv in evals])


def _lodo(held, other, hp, accs):
    """A run holding out A and ``other``: accs = [(step, accuracy on other)]."""
    rest = ",".join(e for e in "ABC" if e not in ("A", other))
    return _record(rest, f"A,{other}", hp, [(s, {"target_test_accuracy": 0.0, f"target_test_accuracy/{other}": a,
                                                 "target_test_accuracy/A": 0.0}) for s, a in accs])


H0, H1 = {}, {"learning_rate": 0.01}
RECORDS = [
    _main(H0, [(100, 0.80, 0.50, 0.55), (200, 0.85, 0.60, 0.58)]),
    _main(H1, [(100, 0.90, 0.40, 0.70), (200, 0.70, 0.65, 0.62)]),
    _lodo("A", "B", H0, [(100, 0.7), (200, 0.6)]), _lodo("A", "C", H0, [(100, 0.5), (200, 0.9)]),  # mean .60, .75
    _lodo("A", "B", H1, [(100, 0.8), (200, 0.8)]), _lodo("A", "C", H1, [(100, 0.6), (200, 0.6)]),  # mean .70, .70
    # test environment B: main runs only, so leave-one-out cannot score it
    _record("A,C", "B", H0, [(200, {"source_val_accuracy": 0.9, "target_test_accuracy": 0.33, "target_val_accuracy": 0.3})]),
]


def test_the_three_rules_pick_what_a_hand_computation_picks():
    runs = index_runs(RECORDS)
    assert set(runs.environments) == {"A", "B", "C"} and len(runs.lodo) == 4
    key = ("cross_entropy", 0, "A")
    # training-domain: H0's best step is 200 (.85), H1's is 100 (.90); H1 wins: test .40
    assert select(runs, "training_domain")[key] == Pick(0.90, 0.40, 100)
    # oracle: last steps, H0 .58 vs H1 .62: test .65 (never the best step)
    assert select(runs, "oracle")[key] == Pick(0.62, 0.65, 200)
    # leave-one-out: H0 .75 at step 200 beats H1's .70 (its tie goes to step 100): test .60
    p = select(runs, "leave_one_out")[key]
    assert p.step == 200 and p.test == 0.60 and p.val == pytest.approx(0.75)
    assert ("cross_entropy", 0, "B") in select(runs, "oracle") and ("cross_entropy", 0, "B") not in select(runs, "leave_one_out")


def test_rule_tables_print_the_picked_accuracies():
    tables = {t.title.split(": ")[1]: t for t in dg_tables(RECORDS)}
    assert list(tables) == ["training_domain", "leave_one_out", "oracle"]
    assert tables["oracle"].header[1:] == ["A", "B", "avg"]
    row = tables["oracle"].rows[0]
    assert row[1].startswith("65.0") and row[2].startswith("33.0") and row[3].startswith("49.0")  # (65 + 33) / 2
    loo = tables["leave_one_out"].rows[0]
    assert loo[1].startswith("60.0") and loo[2] == "–" and loo[3] == "–"  # no avg without every environment
    assert "ORACLE" in tables["oracle"].note


def test_without_leave_one_out_runs_that_table_is_absent_and_bad_inputs_are_named():
    mains = [r for r in RECORDS if "," not in r["config"]["target"]]
    assert rule_table(mains, "leave_one_out") is None and len(dg_tables(mains)) == 2
    with pytest.raises(UserError, match="unknown DG selection rule 'best'"):
        select(index_runs(mains), "best")
    with pytest.raises(UserError, match="two main runs"):
        index_runs([RECORDS[0], RECORDS[0]])
    with pytest.raises(UserError, match="3 targets"):
        index_runs([_record("D", "A,B,C", H0, [])])


@pytest.mark.slow
def test_a_tiny_dg_sweep_end_to_end_writes_the_three_tables(tmp_path):
    from da_framework.bench.domainbed import domainbed_dg, domainbed_space
    from da_framework.bench.report import write_report
    from da_framework.bench.sweep import expand_sweep, run_one

    envs = ["rdigits/0", "rdigits/30", "rdigits/60"]
    base = {k: v for k, v in domainbed_dg("rdigits", "0", steps=4).items() if k not in ("source", "target")}
    base.update(eval_every=2, batch_size=8, model_kwargs={"channels": (8, 8, 8, 8)})
    pairs = [([e for e in envs if e != t], t) for t in envs] + [([envs[2]], "rdigits/0,rdigits/30"), ([envs[1]], "rdigits/0,rdigits/60")]
    sweep = {"name": "dg", "base": base, "methods": ["cross_entropy"], "pairs": pairs, "seeds": [0],
             "search": {"samples": 2, "spaces": {"cross_entropy": domainbed_space("cross_entropy")}}}
    runs = expand_sweep(sweep, tmp_path)
    assert len(runs) == 5 * 2
    for r in runs:
        run_one(r)
    write_report(tmp_path / "dg")
    md = (tmp_path / "dg" / "report.md").read_text()
    for rule in ("training_domain", "leave_one_out", "oracle"):
        assert f"DomainBed selection: {rule}" in md
    headline = md.split("### Headline")[1].split("###")[0]
    assert headline.count("→") == 3  # the leave-one-out runs feed only the DG tables
    assert md.count("10 runs (4 leave-one-out runs, read only by the DomainBed tables)") == 1


def test_eval_target_val_reports_each_targets_val_split_and_leaves_old_hashes_alone():
    from da_framework.config import ConfigError, ExperimentConfig
    from da_framework.data.registry import get_domain
    from da_framework.models.registry import make_model
    from da_framework.results import config_hash
    from da_framework.train import train
    from da_framework.train.evaluate import evaluate, make_predict_fn

    assert config_hash(ExperimentConfig()) == config_hash(ExperimentConfig(eval_target_val=False))
    assert config_hash(ExperimentConfig()) != config_hash(ExperimentConfig(eval_target_val=True))
    with pytest.raises(ConfigError, match="eval_target_val' must be True or False"):
        ExperimentConfig(eval_target_val=1)
    config = ExperimentConfig(source="rdigits/0", target="rdigits/30,rdigits/60", model="mnist_cnn", bottleneck_dim=None,
                              model_kwargs={"channels": (8, 8, 8, 8)}, steps=2, batch_size=8, eval_target_val=True)
    result = train(config)
    m = result.metrics
    assert m["target_val_accuracy"] == pytest.approx((m["target_val_accuracy/rdigits/30"] + m["target_val_accuracy/rdigits/60"]) / 2)
    d = get_domain("rdigits/30")  # an independent evaluation of one target's val split
    model = make_model("mnist_cnn", d.num_classes, None, "layer", channels=(8, 8, 8, 8))
    variables = {"params": result.state.params["model"], **result.state.model_state}
    acc = evaluate(make_predict_fn(model), variables, d.split("val"), d.num_classes, 512, d.input_key)["accuracy"]
    assert m["target_val_accuracy/rdigits/30"] == pytest.approx(acc)
