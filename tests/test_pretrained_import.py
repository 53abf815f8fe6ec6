"""Pretrained torch weights load into the Flax ResNets and ViTs and reproduce torch's outputs.

The references are plain-torch models with torchvision's / timm's exact module names and
arithmetic (tests/torch_reference_models.py), with random weights and random BatchNorm running
statistics, saved as ``.pth`` and ``.safetensors``.  The Flax forward on the same image must
match torch's to a relative error (max |flax - torch| / max |torch|) under 1e-4 in float32,
in eval mode and in train mode, where the updated running statistics must match too.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_reference_models as ref  # noqa: E402

from da_framework.errors import UserError  # noqa: E402
from da_framework.models import make_model  # noqa: E402
from da_framework.transfer.pretrained import (  # noqa: E402
    PretrainedError,
    convert_state_dict,
    load_pretrained,
    read_state_dict,
)
from da_framework.transfer.weights import flatten  # noqa: E402

TOL = 1e-4
MEASURED: dict[str, float] = {}  # printed with -s: the numbers docs/pretrained.md quotes


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


class Case:
    """One torch reference, its saved files, the matching Flax model and a jitted forward."""

    def __init__(self, arch: str, torch_model: torch.nn.Module, size: int, folder: Path, classes: int = 10,
                 channels: int = 3) -> None:
        torch.manual_seed(0)
        self.arch, self.size = arch, size
        self.torch = ref.randomize_(torch_model, seed=1).eval()
        self.pth, self.st = folder / f"{arch}.pth", folder / f"{arch}.safetensors"
        torch.save(self.torch.state_dict(), self.pth)
        safetensors_torch.save_file({k: v.contiguous() for k, v in self.torch.state_dict().items()}, str(self.st))
        rng = np.random.default_rng(2)
        self.x = rng.standard_normal((1, channels, size, size)).astype(np.float32)  # NCHW, one image
        self.x2 = rng.standard_normal((2, channels, size, size)).astype(np.float32)
        self.model = make_model(arch, classes)
        self.shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), jnp.zeros((1, size, size, channels))))
        self.forward = jax.jit(lambda v, x: self.model.apply(v, x)[1])

    def nhwc(self, x: np.ndarray) -> jax.Array:
        return jnp.asarray(x.transpose(0, 2, 3, 1))

    def variables(self, path: Path, **kwargs: object) -> tuple[dict, object]:
        """The file loaded into zero-initialised variables (every leaf must come from the file or the head)."""
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.shapes)
        return load_pretrained(path, zeros, self.arch, **kwargs)

    def torch_features(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.torch.features(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def r18(folder: Path) -> Case:
    return Case("resnet18", ref.resnet18(), 64, folder)


@pytest.fixture(scope="module")
def r50(folder: Path) -> Case:
    return Case("resnet50", ref.resnet50(), 64, folder)


@pytest.fixture(scope="module")
def vit_tiny(folder: Path) -> Case:
    return Case("vit_tiny", ref.vit_tiny(), 16, folder)


@pytest.fixture(scope="module")
def vit_b16(folder: Path) -> Case:
    return Case("vit_b16", ref.vit_base_patch16_224(), 224, folder)


def check_eval_parity(case: Case, fmt: str) -> None:
    variables, report = case.variables(case.pth if fmt == "pth" else case.st)
    err = rel_err(case.forward(variables, case.nhwc(case.x)), case.torch_features(case.x))
    MEASURED[f"{case.arch} eval {fmt}"] = err
    print(f"\n{case.arch} eval-mode features, {fmt}: max relative error {err:.2e}")
    assert err < TOL
    head = "fc" if case.arch.startswith("resnet") else "head"
    # every backbone leaf copied, the head (2 leaves) left alone, and only the torch head unused
    n_backbone = sum(1 for p in flatten(case.shapes) if "/backbone/" in p)
    assert len(report.copied) == n_backbone and report.paths("excluded") == ["params/head/bias", "params/head/kernel"]
    assert set(report.unused_source) == {f"{head}.weight", f"{head}.bias"}


def check_train_mode(case: Case) -> None:
    """One train-mode forward (batch statistics) in both: same outputs, same new running stats.

    Normalising by the statistics of a small batch (ResNet-50's last stage sees 2 x 2 x 2 values
    per channel) is ill-conditioned: torch's own float32 output is ~1e-4 from its float64 output
    there.  So the features are compared with torch in float64, and must be within 1e-4 of it or
    at most twice as far as torch's float32 forward is; the running statistics within 1e-4.
    """
    variables, _ = case.variables(case.pth)
    t = copy.deepcopy(case.torch).train()
    want = t.features(torch.from_numpy(case.x2)).detach().numpy()
    want64 = copy.deepcopy(case.torch).double().train().features(torch.from_numpy(case.x2).double()).detach().numpy()
    train_forward = jax.jit(lambda v, x: case.model.apply(v, x, train=True, mutable=["batch_stats"]))
    (_, got), new = train_forward(variables, case.nhwc(case.x2))
    err, err64, torch_err64 = rel_err(got, want), rel_err(got, want64), rel_err(want, want64)
    expected = convert_state_dict({k: v.numpy() for k, v in t.state_dict().items() if v.is_floating_point()},
                                  case.shapes, case.arch)[0]
    stats = flatten({"batch_stats": new["batch_stats"]})
    assert len(stats) == sum(1 for p in expected if p.startswith("batch_stats/")) > 0
    stat_err = max(rel_err(stats[p], expected[p]) for p in stats)
    MEASURED.update({f"{case.arch} train vs torch32": err, f"{case.arch} train vs torch64": err64,
                     f"{case.arch} torch32 vs torch64": torch_err64, f"{case.arch} running stats": stat_err})
    print(f"\n{case.arch} train-mode features: vs torch float32 {err:.2e}, vs torch float64 {err64:.2e} (torch float32 "
          f"vs float64 {torch_err64:.2e}); updated running mean/var {stat_err:.2e}")
    assert err64 < max(TOL, 2 * torch_err64) and stat_err < TOL
    old = flatten({"batch_stats": variables["batch_stats"]})
    assert max(rel_err(stats[p], old[p]) for p in stats) > 1e-3  # they did move


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_resnet18_matches_torchvision_in_eval_mode(r18, fmt):
    check_eval_parity(r18, fmt)


def test_resnet18_train_mode_batchnorm_matches_torch(r18):
    check_train_mode(r18)


def test_flax_same_padding_would_not_match(r18):
    """The check can fail: the pre-fix layout (Flax "SAME" pads stride-2 windows bottom/right
    only, biased running variance) on the same weights is far off torchvision."""
    old = make_model("resnet18", 10, torchvision=False)
    variables, _ = r18.variables(r18.pth)
    err = rel_err(jax.jit(old.apply)(variables, r18.nhwc(r18.x))[1], r18.torch_features(r18.x))
    MEASURED["resnet18 eval, torchvision=False"] = err
    print(f"\nresnet18 with Flax SAME padding: relative error {err:.2e}")
    assert err > 1e-2


def test_head_is_dropped_by_default_and_kept_on_request(r18):
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), r18.shapes)
    dropped, _ = load_pretrained(r18.pth, zeros, "resnet18")
    assert not np.any(np.asarray(dropped["params"]["head"]["kernel"]))  # untouched
    model = make_model("resnet18", 1000)  # torchvision's 1000 classes, no bottleneck
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    kept, report = load_pretrained(r18.st, zeros, "resnet18", keep_head=True)
    assert "params/head/kernel" in report.copied and report.unused_source == ()
    feats = r18.torch_features(r18.x)
    logits = model.apply(kept, jnp.asarray(feats), method=lambda m, f: m.head(f))
    with torch.no_grad():
        want = r18.torch.fc(torch.from_numpy(feats)).numpy()
    err = rel_err(logits, want)
    print(f"\nresnet18 kept head logits: max relative error {err:.2e}")
    assert err < TOL
    with pytest.raises(PretrainedError, match=r"fc.weight has shape \(1000, 512\) but params/head/kernel \(512, 10\)"):
        r18.variables(r18.pth, keep_head=True)  # 10 classes
    wn = make_model("resnet18", 1000, head_weight_norm=True)  # a (direction, length) head cannot take a linear one
    wn_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                            jax.eval_shape(lambda: wn.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
    with pytest.raises(PretrainedError, match="head is weight-normalised"):
        load_pretrained(r18.st, wn_zeros, "resnet18", keep_head=True)
    assert load_pretrained(r18.st, wn_zeros, "resnet18")[1].copied  # the backbone still loads


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_errors_are_one_line_and_name_file_tensor_and_path(r18, folder):
    with pytest.raises(UserError) as e:
        r18.variables(folder / "nope.pth")
    assert "nope.pth does not exist" in one_line(e)
    # a ResNet-18 file into a ResNet-50: the first tensor of another shape, torch name and Flax path
    r50_model = make_model("resnet50", 10)
    shapes = jax.eval_shape(lambda: r50_model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    with pytest.raises(PretrainedError) as e:
        load_pretrained(r18.pth, shapes, "resnet50")
    assert one_line(e) == (
        f"{r18.pth}: layer1.0.conv1.weight has shape (64, 64, 3, 3) but "
        "params/backbone/BottleneckBlock_0/Conv_0/kernel (1, 1, 64, 64) needs torch shape (64, 64, 1, 1); "
        "the file is not a resnet50 of this size"
    )
    with pytest.raises(PretrainedError, match=r"has no blocks.0.attn.qkv.bias \(96,\) for params/backbone/block0/"
                                              r"attention/key/bias \(2, 16\); it is not a torchvision/timm vit_tiny "
                                              r"state_dict \(its first key is 'conv1.weight'\)"):
        vit = make_model("vit_tiny", 10)
        load_pretrained(r18.pth, jax.eval_shape(lambda: vit.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))),
                        "vit_tiny")
    state = read_state_dict(r18.st)
    missing = r"has no layer4.1.bn2.running_var \(512,\) for batch_stats/backbone/BasicBlock_7/BatchNorm_1/var"
    with pytest.raises(PretrainedError, match=missing):
        convert_state_dict({k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"}, r18.shapes, "resnet18")
    with pytest.raises(PretrainedError, match=r"extra.weight \(3,\) has no place in resnet18 \(1 such tensors\)"):
        convert_state_dict({**state, "extra.weight": np.zeros(3, np.float32)}, r18.shapes, "resnet18")
    with pytest.raises(PretrainedError, match="no importer for model 'lenet'"):
        convert_state_dict(state, r18.shapes, "lenet")
    bad = folder / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError) as e:
        r18.variables(bad)
    assert one_line(e).startswith(f"cannot read {bad} with torch.load")


def test_pth_without_torch_says_to_install_it(r18, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(PretrainedError, match=r"needs torch: install torch"):
        read_state_dict(r18.pth)
    assert read_state_dict(r18.st)  # .safetensors needs no torch


def test_half_precision_and_wrapped_files_read_as_float32(folder):
    """bfloat16 .safetensors, float16 .pth in a {"state_dict": ...} checkpoint with DataParallel's
    "module." prefix: float32 arrays of the same values; integer tensors skipped."""
    w = torch.tensor([1.5, -0.25, 3.0])
    st = folder / "half.safetensors"
    safetensors_torch.save_file({"a": w.bfloat16(), "n": torch.zeros((), dtype=torch.int64)}, str(st))
    assert {k: v.tolist() for k, v in read_state_dict(st).items()} == {"a": [1.5, -0.25, 3.0]}
    pth = folder / "half.pth"
    torch.save({"state_dict": {"module.a": w.half(), "module.n": torch.zeros((), dtype=torch.int64)}, "epoch": 3}, pth)
    got = read_state_dict(pth)
    assert list(got) == ["a"] and got["a"].dtype == np.float32 and got["a"].tolist() == [1.5, -0.25, 3.0]


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vit_tiny_matches_timm_layout(vit_tiny, fmt):
    check_eval_parity(vit_tiny, fmt)


@pytest.mark.slow
def test_resnet50_matches_torchvision_eval_and_train(r50):
    check_eval_parity(r50, "pth")
    check_eval_parity(r50, "safetensors")
    check_train_mode(r50)


@pytest.mark.slow
def test_vit_b16_matches_timm_vit_base_patch16_224(vit_b16):
    check_eval_parity(vit_b16, "safetensors")


def _gray_vit_tiny_file(folder: Path) -> tuple[torch.nn.Module, Path]:
    t = ref.randomize_(ref.vit_tiny(in_chans=1), seed=3)  # the digits domains are 16x16x1
    path = folder / "vit_tiny_gray.safetensors"
    safetensors_torch.save_file(t.state_dict(), str(path))
    return t, path


def test_training_init_starts_from_the_file(folder):
    """``model_kwargs={"pretrained": file}``: the train state starts from the file's weights
    (head dropped); a missing file or a model with no importer is a one-line UserError."""
    from da_framework.config import ExperimentConfig
    from da_framework.train import train
    from da_framework.train.loop import batch_streams, build, init_state, load_pretrained_for

    t, path = _gray_vit_tiny_file(folder)
    config = ExperimentConfig(model="vit_tiny", model_kwargs={"pretrained": str(path)}, batch_size=4, steps=1)
    exp = build(config)
    src, tgt = batch_streams(exp, 0, 4)
    sb, tb = next(src), next(tgt)
    values, report = load_pretrained_for(exp, jax.random.key(0), sb, tb)
    state = jax.jit(lambda k, s, t, v: init_state(exp, k, s, t, v))(jax.random.key(0), sb, tb, values)
    got = flatten({"params": state.params["model"]})
    np.testing.assert_array_equal(np.asarray(got["params/backbone/cls"]), t.cls_token.detach().numpy())
    np.testing.assert_array_equal(np.asarray(got["params/backbone/block1/mlp_in/kernel"]),
                                  t.blocks[1].mlp.fc1.weight.detach().numpy().T)
    assert report.paths("excluded") == ["params/head/bias", "params/head/kernel"]
    with pytest.raises(PretrainedError, match="loaded by train"):
        init_state(exp, jax.random.key(0), sb, tb)  # a runner that does not load the file says so
    with pytest.raises(UserError) as e:
        train(config.replace(model_kwargs={"pretrained": str(folder / "missing.pth")}))
    assert "missing.pth does not exist" in one_line(e)
    with pytest.raises(UserError, match="no importer for model 'lenet'"):
        train(config.replace(model="lenet", model_kwargs={"pretrained": str(path)}))
    with pytest.raises(UserError, match="'pretrained_head' must be True or False"):
        train(config.replace(model_kwargs={"pretrained": str(path), "pretrained_head": "yes"}))


@pytest.mark.slow
def test_train_reports_what_it_loaded(folder, capsys):
    from da_framework.config import ExperimentConfig
    from da_framework.train import train

    _, path = _gray_vit_tiny_file(folder)
    r = train(ExperimentConfig(model="vit_tiny", model_kwargs={"pretrained": str(path)}, batch_size=4, steps=1))
    assert r.pretrained is not None and len(r.pretrained.copied) == 38  # 2 blocks x 16, embedding 2, cls, pos, norm 2
    assert f"pretrained {path} -> vit_tiny: copied 38 leaves" in capsys.readouterr().out
