"""Model-selection validators and proxy A-distance against NumPy references and hand-computed cases."""

import math

import numpy as np
import pytest

from da_framework.bench.analysis import accuracy_curve, proxy_a_distance
from da_framework.bench.selection import (
    cross_entropy_per_example,
    density_ratio_weights,
    dev_risk,
    iwcv_risk,
    label_free_scores,
    prediction_entropy,
    select_best,
    soft_neighborhood_density,
)


def _snd_reference(logits, tau=0.05):
    """Loop-by-loop SND (Saito et al. 2021) in float64."""
    p = [np.exp(l - max(l)) / np.sum(np.exp(l - max(l))) for l in np.asarray(logits, np.float64)]
    f = [v / math.sqrt(sum(v * v)) for v in p]
    total = 0.0
    for i in range(len(f)):
        sims = [float(np.dot(f[i], f[j])) / tau for j in range(len(f)) if j != i]
        m = max(sims)
        z = sum(math.exp(s - m) for s in sims)
        q = [math.exp(s - m) / z for s in sims]
        total += -sum(x * math.log(x) for x in q if x > 0)
    return total / len(f)


def test_entropy_hand_cases():
    assert prediction_entropy(np.zeros((4, 10))) == pytest.approx(math.log(10))
    assert prediction_entropy(np.array([[100.0, 0.0, 0.0]])) == pytest.approx(0.0, abs=1e-12)
    # p = (0.5, 0.5) for one row, one-hot for the other: mean entropy = log(2)/2
    assert prediction_entropy(np.array([[0.0, 0.0], [50.0, -50.0]])) == pytest.approx(math.log(2) / 2)


def test_snd_matches_reference_and_hand_cases():
    logits = np.random.default_rng(0).normal(size=(12, 5)) * 3
    assert soft_neighborhood_density(logits) == pytest.approx(_snd_reference(logits), rel=1e-10)
    assert soft_neighborhood_density(logits, 0.5) == pytest.approx(_snd_reference(logits, 0.5), rel=1e-10)
    # two points: each has one neighbour, probability 1, entropy 0
    assert soft_neighborhood_density(logits[:2]) == pytest.approx(0.0, abs=1e-12)
    # three identical predictions: each row uniform over 2 neighbours
    assert soft_neighborhood_density(np.zeros((3, 4))) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="at least 2"):
        soft_neighborhood_density(logits[:1])


def test_cross_entropy_per_example_reference():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    ref = [-math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3))), math.log(3)]
    np.testing.assert_allclose(cross_entropy_per_example(logits, np.array([0, 2])), ref, rtol=1e-12)


def test_iwcv_and_dev_hand_computed():
    losses, w = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    weighted = w * losses  # 0.5, 2, 6
    assert iwcv_risk(losses, w) == pytest.approx(8.5 / 3)
    mean_l, mean_w = 8.5 / 3, 3.5 / 3
    cov = sum((a - mean_l) * (b - mean_w) for a, b in zip(weighted, w)) / 2
    var = sum((b - mean_w) ** 2 for b in w) / 2
    eta = -cov / var
    assert dev_risk(losses, w) == pytest.approx(mean_l + eta * mean_w - eta, rel=1e-12)
    # constant weights: no control variate, DEV == IWCV == weighted mean
    assert dev_risk(losses, np.full(3, 2.0)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same shape"):
        iwcv_risk(losses, w[:2])


def test_density_ratio_weights_follow_the_shift():
    rng = np.random.default_rng(0)
    same = density_ratio_weights(rng.normal(size=(200, 3)), rng.normal(size=(200, 3)))
    assert abs(np.mean(same) - 1.0) < 0.3
    xs, xt = rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + [1.5, 0.0]
    w = density_ratio_weights(xs, xt)
    assert w.shape == (200,) and np.all(w > 0)
    assert np.corrcoef(w, xs[:, 0])[0, 1] > 0.5  # source points nearer the target get larger weights


def test_proxy_a_distance_limits():
    rng = np.random.default_rng(0)
    assert proxy_a_distance(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 20.0) == pytest.approx(2.0)
    assert abs(proxy_a_distance(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)))) < 0.5


def test_select_best_respects_direction():
    recs = [{"selection": {"source_val_accuracy": 0.5, "dev_risk": 1.0}, "id": 0},
            {"selection": {"source_val_accuracy": 0.7, "dev_risk": 2.0}, "id": 1}]
    assert select_best(recs, "source_val_accuracy")["id"] == 1
    assert select_best(recs, "dev_risk")["id"] == 0
    with pytest.raises(ValueError, match="valid"):
        select_best(recs, "nope")


def test_accuracy_curve_skips_entries_without_the_key():
    steps, vals = accuracy_curve([{"step": 1, "a": 0.1}, {"step": 2}, {"step": 3, "a": 0.3}], "a")
    assert steps.tolist() == [1, 3] and vals.tolist() == [0.1, 0.3]


def test_every_evaluation_scores_the_label_free_validators():
    """eval_validators=True: each evaluation carries validator/<name>, the final one equal to
    label_free_scores of the final state's own predictions; picking by them reads the history."""
    import importlib.util
    from pathlib import Path

    from da_framework.config import ExperimentConfig
    from da_framework.train.evaluate import make_predict_fn, predict_split
    from da_framework.train.loop import build, train

    config = ExperimentConfig(method="dann", steps=8, eval_every=4, eval_validators=True, model="mlp",
                              model_kwargs={"hidden": (16,)}, batch_size=16, log_every=4)
    result = train(config)
    evals = [h for h in result.history if "target_test_accuracy" in h]
    assert [h["step"] for h in evals] == [4, 8]
    assert all({"validator/iwcv_risk", "validator/dev_risk", "validator/target_entropy", "validator/snd"} <= h.keys()
               for h in evals)
    exp = build(config)
    predict = make_predict_fn(exp.model)
    variables = {"params": result.state.params["model"], **result.state.model_state}
    s_val = predict_split(predict, variables, exp.sources[0].split("val"), 512)
    t_train = predict_split(predict, variables, exp.targets[0].split("train"), 512)
    assert len(t_train["label"]) < 4000  # no subsample: the whole split, as label_free_scores sees it here
    want = label_free_scores(s_val, t_train, seed=0)
    for name, value in want.items():
        assert evals[-1][f"validator/{name}"] == pytest.approx(value, rel=1e-6)
    assert "validator/snd" not in train(config.replace(eval_validators=False, steps=4)).history[-1]

    spec = importlib.util.spec_from_file_location("rdt", Path(__file__).parent.parent / "benchmarks" / "real_digits_table.py")
    rdt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rdt)
    hand = {"history": [{"step": 1, "target_test_accuracy": 0.5, "validator/iwcv_risk": 0.2, "validator/dev_risk": 0.9,
                         "validator/target_entropy": 0.1, "validator/snd": 3.0},
                        {"step": 2, "target_test_accuracy": 0.7, "validator/iwcv_risk": 0.4, "validator/dev_risk": 0.3,
                         "validator/target_entropy": 0.6, "validator/snd": 2.0}]}
    assert rdt.validator_picks(hand) == {"iwcv_risk": 50.0, "dev_risk": 70.0, "target_entropy": 50.0, "snd": 50.0}
    assert rdt.validator_picks({"history": [{"step": 1, "target_test_accuracy": 0.5}]}) is None


def test_label_free_scores_subsample_the_target():
    rng = np.random.default_rng(0)
    s_val = {"logits": rng.normal(size=(40, 3)), "features": rng.normal(size=(40, 4)), "label": rng.integers(0, 3, 40)}
    t = {"logits": rng.normal(size=(90, 3)), "features": rng.normal(size=(90, 4)) + 1.0}
    keep = np.sort(np.random.default_rng(5).permutation(90)[:30])
    sub = label_free_scores(s_val, t, seed=5, max_target=30)
    assert sub == label_free_scores(s_val, {k: v[keep] for k, v in t.items()}, seed=5)
    assert sub["snd"] != label_free_scores(s_val, t, seed=5)["snd"]


def test_sweep_selection_scores_subsample_a_large_target_as_the_training_validators_do():
    # Before: da bench scored SND on the whole target split, a 54,000 x 54,000 float64 matrix
    # for USPS -> MNIST (killed for memory on a 24 GiB machine, or a segfault inside BLAS).
    from da_framework.bench.selection import VALIDATOR_TARGET_EXAMPLES, selection_scores
    from da_framework.train import loop

    rng = np.random.default_rng(1)
    s_val = {"logits": rng.normal(size=(40, 3)), "features": rng.normal(size=(40, 4)), "label": rng.integers(0, 3, 40)}
    t = {"logits": rng.normal(size=(90, 3)), "features": rng.normal(size=(90, 4)) + 1.0}
    t_test = {"logits": rng.normal(size=(20, 3)), "label": rng.integers(0, 3, 20)}
    got = selection_scores(s_val, t, t_test, seed=5, max_target=30)
    assert {k: got[k] for k in ("iwcv_risk", "dev_risk", "target_entropy", "snd")} == label_free_scores(s_val, t, seed=5, max_target=30)
    assert got["target_oracle_accuracy"] == np.mean(np.argmax(t_test["logits"], -1) == t_test["label"])
    assert selection_scores.__defaults__[-1] == VALIDATOR_TARGET_EXAMPLES == 4000  # as train()'s validators
    # a sweep record says how many target examples its validators read
    from da_framework.bench.sweep import evaluate_for_selection
    from da_framework.config import ExperimentConfig

    config = ExperimentConfig(method="source_only", steps=2, model="mlp", model_kwargs={"hidden": (8,)}, batch_size=8)
    result = loop.train(config)
    selection, analysis, _ = evaluate_for_selection(config, result.state)
    n_target = len(loop.build(config).targets[0].split("train"))
    assert analysis["validator_target_examples"] == min(n_target, 4000) and "snd" in selection
