"""Bad user input fails at parse/config time with the project's error and a one-line message.

Covers method specs (parse_method), config values (ExperimentConfig / --set overrides) and
experiment files (load_experiment).
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ConfigError, ExperimentConfig, from_dict, parse_override
from da_framework.experiment_files import load_experiment
from da_framework.losses import LossError, register_loss
from da_framework.train.method import LossTerm, Method, parse_method


@register_loss("test_tuple_hparams", description="zero; takes a tuple and a string", reference="(test)", overwrite=True)
def _tuple_hparams(inputs, alphas=(1.0,), tag="a"):
    return jnp.zeros(())


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---- method specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, match",
    [
        ("1.0.0*mmd", r"weight '1\.0\.0' of loss 'mmd'.*not a number"),
        ("cross_entropy + abc*mmd", r"weight 'abc' of loss 'mmd'.*not a number"),
        ("", "method spec '' is empty; write e.g."),
        ("   ", "method spec '   ' is empty"),
        ("cross_entropy + -1.0*mmd", "signed weight.*'-' in place of '\\+'"),
        ("cross_entropy - -1.0*mmd", "signed weight"),
        ("cross_entropy +", "trailing sign"),
        ("cross_entropy + nan*mmd", "weight 'nan' of loss 'mmd'.*not finite"),
        ("cross_entropy + inf*mmd", "weight 'inf' of loss 'mmd'.*not finite"),
        ("cross_entropy + 1e999*mmd", "weight '1e999' of loss 'mmd'.*not finite"),
        ("mmd(estimator)", "must be written name=value"),
        ("mmd(estimator=1, estimator=2)", "'estimator' of 'mmd' is given twice"),
        ("mmd(estimator=1+x)", "value '1\\+x', which is not a Python literal"),
        ("mmd(estimator=(1.0, 2.0)", "cannot parse hyper-parameters"),
        ("mmd(estimator=1)(x=2)", "unbalanced brackets"),
    ],
)
def test_bad_method_specs_raise_loss_error(spec, match):
    with pytest.raises(LossError, match=match) as e:
        parse_method(spec)
    _one_line(e)


def test_explicit_minus_gives_a_negative_weight():
    m = parse_method("cross_entropy - 0.1*entropy")
    assert [(t.loss, t.weight) for t in m.terms] == [("cross_entropy", 1.0), ("entropy", -0.1)]
    assert parse_method("cross_entropy - mmd").terms[1].weight == -1.0
    assert parse_method("- 0.5*mmd + cross_entropy").terms[0].weight == -0.5  # a leading '-' negates term 1
    assert parse_method("cross_entropy + 1e-3*mmd").terms[1].weight == pytest.approx(1e-3)  # exponent, not a minus


def test_hparams_are_python_literals():
    m = parse_method("cross_entropy + 2*test_tuple_hparams(alphas=(1.0, 2.0), tag='x, y')@linear")
    assert dict(m.terms[1].hparams) == {"alphas": (1.0, 2.0), "tag": "x, y"}
    assert dict(parse_method("test_tuple_hparams(tag=\"a)+b\")").terms[0].hparams) == {"tag": "a)+b"}
    assert dict(parse_method("1.0*mmd(estimator=unbiased)").terms[0].hparams) == {"estimator": "unbiased"}  # bare word


@pytest.mark.parametrize(
    "spec",
    [
        "cross_entropy + 0.5*mmd(estimator=unbiased)@linear",
        "cross_entropy - 0.1*entropy",
        "-0.25*mmd + cross_entropy",
        "cross_entropy + 1.0*test_tuple_hparams(alphas=(1.0, 2.0), tag='x, y')",
        "cross_entropy - 3*test_tuple_hparams(tag='a - b + c')@linear",
        "mean_teacher",
    ],
)
def test_spec_round_trips(spec):
    m = parse_method(spec)
    assert parse_method(m.spec()).terms == m.terms


def test_spec_writes_negative_weights_with_minus():
    m = Method("m", (LossTerm("cross_entropy"), LossTerm("mmd", weight=-0.5)))
    assert m.spec() == "cross_entropy - 0.5*mmd"
    assert Method("m", (LossTerm("mmd", weight=-2.0),)).spec() == "- 2.0*mmd"


@pytest.mark.parametrize("weight", [math.nan, math.inf, True, "1"])
def test_loss_term_weight_must_be_a_finite_number(weight):
    with pytest.raises(LossError, match="weight of loss 'mmd' must be a finite number"):
        Method("m", (LossTerm("mmd", weight=weight),))


# ---- config values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, match",
    [
        ("steps=abc", "config key 'steps' must be an int, got 'abc' \\(str\\)"),
        ("learning_rate=nan", "config key 'learning_rate' must be a finite number, got 'nan' \\(str\\)"),
        ("learning_rate=1e999", "config key 'learning_rate' must be a finite number, got inf"),
        ("steps=5.5", "config key 'steps' must be an int, got 5.5 \\(float\\)"),
        ("steps=5.0", "config key 'steps' must be an int, got 5.0 \\(float\\)"),
        ("batch_size=True", "config key 'batch_size' must be an int, got True \\(bool\\)"),
        ("bottleneck_dim=1.5", "config key 'bottleneck_dim' must be an int or None"),
        ("grad_clip=abc", "config key 'grad_clip' must be a finite number or None"),
        ("method=3", "config key 'method' must be a string, got 3 \\(int\\)"),
        ("model_kwargs=[1]", "config key 'model_kwargs' must be a dict, got \\[1\\] \\(list\\)"),
        ("steps=0", "config key 'steps' has invalid value 0; it must be > 0"),
    ],
)
def test_bad_config_values_raise_config_error(override, match):
    key, value = parse_override(override)
    with pytest.raises(ConfigError, match=match) as e:
        ExperimentConfig().replace(**{key: value})
    _one_line(e)


def test_config_values_of_the_right_type_are_kept_and_normalised():
    c = from_dict({"learning_rate": 1, "grad_clip": 2, "steps": np.int64(7), "bottleneck_dim": None})
    assert (c.learning_rate, c.grad_clip, c.steps, c.bottleneck_dim) == (1.0, 2.0, 7, None)
    assert type(c.learning_rate) is float and type(c.steps) is int
    assert c.to_dict()["steps"] == 7  # JSON-serialisable (np.int64 is not)


# ---- experiment files -----------------------------------------------------------------------


def _experiment(tmp_path, text, name="exp.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("x = 1\ndef get_config(:\n    return {}\n", "exp.py, line 2: SyntaxError: "),
        ("import math\n\nraise RuntimeError('broken\\nimport')\n", "exp.py, line 3: RuntimeError: broken import"),
        ("def get_config():\n    return {'steps': 1 / 0}\n", "exp.py, line 2: ZeroDivisionError: division by zero"),
        ("def get_config():\n    return [('steps', 5)]\n", "get_config\\(\\) of experiment file .*exp.py must return a dict.*got list"),
        ("def get_config():\n    return {'steps': 'abc'}\n", "config key 'steps' must be an int, got 'abc'"),
    ],
)
def test_broken_experiment_files_raise_one_line_config_error(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_experiment(_experiment(tmp_path, text))
    _one_line(e)


def test_import_error_keeps_the_original_as_cause(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_experiment(_experiment(tmp_path, "raise KeyError('x')\n"))
    assert isinstance(e.value.__cause__, KeyError)


def test_yaml_experiment_says_experiments_are_python_files(tmp_path):
    with pytest.raises(ConfigError, match="exp.yaml is not a Python file; experiments are Python files .*get_config"):
        load_experiment(_experiment(tmp_path, "steps: 5\n", name="exp.yaml"))


def test_weight_decay_with_plain_adam_is_refused_not_ignored():
    """optax.adam has no weight decay: a nonzero weight_decay would silently do nothing."""
    from da_framework.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="weight_decay=0.001 would be ignored.*adamw"):
        ExperimentConfig(optimizer="adam", weight_decay=1e-3)
    assert ExperimentConfig(optimizer="adamw", weight_decay=1e-3).weight_decay == 1e-3
    assert ExperimentConfig(optimizer="adam").weight_decay == 0.0


def test_dotted_overrides_set_one_entry_of_a_dict_key():
    key, value = parse_override("model_kwargs.pretrained=/data/resnet50.pth")
    assert (key, value) == ("model_kwargs.pretrained", "/data/resnet50.pth")
    config = ExperimentConfig(model_kwargs={"channels": (4, 8), "dense": 16})
    new = config.replace(**{key: value, "lr_multipliers.^model/backbone/": 0.1})
    assert dict(new.model_kwargs) == {"channels": [4, 8], "dense": 16, "pretrained": "/data/resnet50.pth"}
    assert dict(new.lr_multipliers) == {"^model/backbone/": 0.1}
    for bad in ("steps.x=3", "model_kwargs.=3", "nope.x=1"):
        with pytest.raises(ConfigError, match="must be <dict key>.<entry>; dict keys: model_kwargs, lr_multipliers"):
            parse_override(bad)
