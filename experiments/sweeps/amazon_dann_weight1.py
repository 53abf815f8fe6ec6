"""Diagnostic for amazon_sentiment: the framework's ``dann`` preset (weight 1.0) on the 12 pairs, seed 0 only.

Run:    DA_DATA_DIR=../shared/data da bench amazon_dann_weight1 --results-dir benchmarks/results

Same base as experiments/sweeps/amazon_sentiment.py; only the DANN weight differs (1.0, the
preset, instead of 0.2 = 2 x Ganin et al.'s lambda_adapt 0.1).  In amazon_sentiment the
discriminator loss stays at ln 2 throughout training; this checks whether a 5x larger weight,
i.e. a 5x faster discriminator and reversal, changes that.  Not a tuning run: its target
accuracy is reported beside, not instead of, the main sweep (docs/amazon_sentiment.md).
"""

from pathlib import Path

from da_framework.experiment_files import import_python_file

_MAIN = import_python_file(
    Path(__file__).with_name("amazon_sentiment.py"), "da_sweep_amazon_sentiment_base", kind="sweep"
)


def get_sweep() -> dict:
    """The ``dann`` preset x the 12 ordered pairs x seed 0, on amazon_sentiment's base."""
    base = _MAIN.get_sweep()
    return {
        "name": "amazon_dann_weight1",
        "base": base["base"],
        "methods": ["dann"],
        "pairs": base["pairs"],
        "seeds": [0],
    }
