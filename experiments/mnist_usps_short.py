"""MNIST -> USPS, the tllib digits protocol shortened to fit a 2-core CPU.

Protocol and where each choice comes from (tllib = thuml/Transfer-Learning-Library, examples/domain_adaptation/image_classification/;
the ``# Digits`` lines of ``erm.sh``, ``dann.sh``, ``dan.sh`` and the argparse defaults of
``dann.py``/``cdan.py``/``mcc.py``, as stored at commits 09d0eb81 (``*.sh``) and 72d4799e (``*.py``)):

- data: source ``mnist`` (full MNIST), target ``usps``; 28x28 gray, USPS resized 16 -> 28 (scripts: ``--resize-size 28
  --train-resizing 'res.'``), no augmentation (``--no-hflip``), evaluated on the target
  test split (2,007 USPS / 10,000 MNIST images);
- input normalisation ``(x - 0.5) / 0.5`` (``--norm-mean 0.5 --norm-std 0.5``): the
  ``input_mean``/``input_std`` model kwargs;
- backbone ``lenet_tllib`` (``-a lenet --no-pool --scratch``; ``tllib/vision/models/digits.py``),
  then a 256-d bottleneck (``ImageClassifier``'s ``--bottleneck-dim 256`` default of
  dann.py/cdan.py/mcc.py/dan.py) and a linear head;
- batch 64 per domain (shortened; tllib: ``-b 128``);
- optimiser ``sgd``: momentum 0.9, Nesterov, weight decay 1e-3 added to the gradient
  (dann.py, erm.py, mdd.py: ``SGD(..., momentum=0.9, weight_decay=wd, nesterov=True)``; wd 1e-3 is the
  default of dann.py/cdan.py/mcc.py);
- learning rate 0.01 (``--lr 0.01`` on MNIST -> USPS in erm.sh, dann.sh, dan.sh); schedule ``inv:0.001`` = lr * (1 + 0.001 * step)^-0.75 per step (``LambdaLR``
  with ``--lr-gamma 0.001``, the dann.py/cdan.py/mcc.py default; not the DANN paper's
  (1 + 10 p)^-0.75);
- 5,000 steps: the shortened protocol for a 2-core CPU (tllib: 50,000);
- evaluation every 500 steps.

Known differences from tllib, not closed here (each can move the numbers):

- the bottleneck is Dense -> LayerNorm -> ReLU (tllib: Linear -> BatchNorm1d -> ReLU); tllib's
  ERM has no bottleneck and MDD a 1024-d one with 1024-wide heads;
- per-method settings: erm.py/dan.py use wd 5e-4 and lr-gamma 0.0003, mdd.py wd 5e-4,
  lr-gamma 0.0002 (jan.py, mdd.sh not checked); this file has DANN's;
- source/target train sets: the first 90% of each train file (54,000 MNIST / 6,562 USPS;
  the last 10% is the val split); tllib trains on all 60,000 / 7,291;
- initialisation: flax LeCun-normal weights and zero biases (PyTorch: uniform +-1/sqrt(fan_in));
- model selection: tllib reports the best epoch on the target test set (an oracle); ``da run``
  reports the last step;
- length and batch: 5,000 steps of batch 64 instead of 50,000 of 128 (how far this lands
  from the full protocol is not measured yet).

Accuracy: not measured yet.
Data: ``DA_DATA_DIR=../shared/data`` (layout ``<data_dir>/<dataset>/<dataset>.npz``, docs/real_digits.md).
"""


def get_config() -> dict:
    """MNIST -> USPS, tllib's protocol at 5,000 steps of batch 64."""
    return {
        "source": "mnist",
        "target": "usps",
        "model": "lenet_tllib",
        "model_kwargs": {"input_mean": 0.5, "input_std": 0.5},
        "bottleneck_dim": 256,
        "batch_size": 64,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "lr_schedule": "inv:0.001",
        "weight_decay": 1e-3,
        "steps": 5000,
        "eval_every": 500,
    }
