"""Square's windowed queries: only what the changed square reaches is recomputed, with the full pass's logits,
on plain chains, residual networks and models from outside the project."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from agkd_bml.attacks import square as square_mod
from agkd_bml.data import load_dataset, to_float
from agkd_bml.models import build_model
from agkd_bml.models import windowed as windowed_mod
from agkd_bml.models.external import load_external
from agkd_bml.models.inference import ConvReLU, channels_last, inference_copy
from agkd_bml.models.windowed import CONV, WindowedForward

#: a PreAct ResNet-18 written as outside code bases write it (its own forward), loaded through py:
OUTSIDE_RESNET = "py:benchmarks/preact_resnet18.py:make_w16"


def _images(name: str, cifar_path: str) -> tuple[object, torch.Tensor]:
    data = load_dataset(f"npz:{cifar_path}" if name == "cifar" else "digits")
    return data.spec, channels_last(to_float(data.x_test[:24]))


def _random_batchnorms(net: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from the identity, so folding them is not a no-op."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _model(arch: str, spec) -> nn.Module:
    if arch == "outside-resnet":
        return _random_batchnorms(load_external(OUTSIDE_RESNET, normalize=(spec.mean, spec.std)))
    return _random_batchnorms(build_model(arch, spec))


@pytest.mark.parametrize(("data", "arch"), [("digits", "small-cnn"), ("cifar", "small-cnn"),
                                            ("cifar", "preact-resnet18-w8"), ("cifar", "outside-resnet")])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_windowed_logits_are_the_full_passes_through_accepts_and_dropped_rows(
        data, arch, precision, cifar_path):
    """Random windows (borders, 1 pixel to the whole image), random acceptances and rows leaving, as in
    Square: in float32 bit for bit where the probe says so, else to float rounding (then Square would not use
    them); in bf16 to its rounding: oneDNN's AMX kernels may round a crop of a batch of 24 one bf16 unit away
    from the whole image on a row or two, which a probe on 8 images does not see."""
    torch.manual_seed(0)
    spec, images = _images(data, cifar_path)
    if arch == "outside-resnet" and spec.channels != 3:
        pytest.skip("the outside model is built for 3 channels")
    net = inference_copy(_model(arch, spec))
    windowed = WindowedForward.of(net, images)
    convs = {"small-cnn": 4, "preact-resnet18-w8": 20, "outside-resnet": 20}[arch]
    assert windowed is not None and list(windowed.kinds.values()).count(CONV) == convs
    size = images.shape[-1]
    rng = random.Random(0)
    best = images.clone()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        exact = windowed.matches_full_passes(images[:8], tuple(range(1, size + 1)))
        tol = 1e-5 if precision == "fp32" else 2e-2
        check = (torch.equal if exact and precision == "fp32" else lambda a,
                 b: torch.allclose(a, b, rtol=tol, atol=tol))
        assert torch.equal(windowed.start(best), net(best).logits)
        for query in range(40):
            side = rng.randint(1, size)
            top, left = rng.randrange(size + 1 - side), rng.randrange(size + 1 - side)
            candidate = best.clone()
            candidate[:, :, top : top + side, left : left + side] = torch.rand_like(
                candidate[:, :, top : top + side, left : left + side])
            logits = windowed.logits(candidate, (top, top + side, left, left + side))
            assert check(logits, net(candidate).logits), (query, side, top, left)
            better = torch.rand(best.shape[0]) < 0.5
            windowed.accept(better)
            best = torch.where(better.view(-1, 1, 1, 1), candidate, best)
            if query % 20 == 19:
                keep = torch.rand(best.shape[0]) < 0.8
                windowed.keep(keep)
                best = best[keep]
    assert 0 < best.shape[0] < images.shape[0]


def test_bare_convolutions_and_relus_in_the_chain(digits):
    """A bare 1x1 convolution (a pointwise window) and a 3x3 one whose ReLU sits in another ``nn.Sequential``:
    the traced copy fuses that pair too."""
    torch.manual_seed(0)
    net = build_model("small-cnn", digits.spec).eval()
    net.backbone.extend([nn.Conv2d(128, 128, 1), nn.Conv2d(128, 128, 3, padding=1), nn.Sequential(nn.ReLU())])
    net = inference_copy(net)
    x = channels_last(to_float(digits.x_test[:16]))
    windowed = WindowedForward.of(net, x)
    assert windowed is not None
    convs = [windowed.modules[str(n.target)] for n, kind in windowed.kinds.items() if kind == CONV]
    assert [type(m) for m in convs[-2:]] == [nn.Conv2d, ConvReLU]
    with torch.inference_mode():
        windowed.start(x)
        for top, left, side in ((0, 0, 1), (7, 3, 2), (13, 13, 3), (4, 9, 5)):
            candidate = x.clone()
            candidate[:, :, top : top + side, left : left + side] = 0.5
            logits = windowed.logits(candidate, (top, top + side, left, left + side))
            torch.testing.assert_close(logits, net(candidate).logits, rtol=1e-5, atol=1e-5)


def _count_windowed_queries(monkeypatch) -> list[int]:
    calls: list[int] = []
    logits = WindowedForward.logits
    monkeypatch.setattr(WindowedForward, "logits", lambda self, *a: calls.append(1) or logits(self, *a))
    return calls


def test_square_with_windowed_queries_finds_what_full_passes_find(teacher_run, digits, monkeypatch):
    """The same adversarial images, bit for bit, on a trained model (fewer queries than AutoAttack's)."""
    from agkd_bml.train import load_model

    net = inference_copy(load_model(teacher_run)[0])
    x, y = channels_last(to_float(digits.x_test[:48])), digits.y_test[:48]
    with torch.no_grad():
        right = net(x).logits.argmax(1) == y
    x, y = x[right], y[right]
    calls = _count_windowed_queries(monkeypatch)
    runs, counts = [], []
    for windows in (True, False):
        if not windows:
            monkeypatch.setattr(WindowedForward, "of", classmethod(lambda cls, model, example: None))
        # bit-exact windows here (the probe would say if not)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(square_mod.square(net, x, y, eps=0.1, queries=300,
                                          generator=torch.Generator().manual_seed(0)))
        counts.append(len(calls))
    assert counts[0] > 250 and counts[1] == counts[0]  # nearly every query windowed, then none
    (windowed_adv, windowed_fooled), (adv, fooled) = runs
    assert 0 < int(fooled.sum()) < x.shape[0]  # some found, some not: the searches did work
    assert torch.equal(windowed_adv, adv) and torch.equal(windowed_fooled, fooled)


def test_square_falls_back_to_full_passes_when_windows_round_differently(teacher_run, digits, monkeypatch):
    from agkd_bml.train import load_model

    net = inference_copy(load_model(teacher_run)[0])
    x, y = channels_last(to_float(digits.x_test[:16])), digits.y_test[:16]
    unpadded = windowed_mod._unpadded
    monkeypatch.setattr(windowed_mod, "_unpadded", lambda module, h: unpadded(module, h) * (1 + 2**-20))
    calls = _count_windowed_queries(monkeypatch)
    square_mod.square(net, x, y, eps=0.1, queries=50, generator=torch.Generator().manual_seed(0))
    assert calls and len(calls) <= 1  # the probe's first window differed, then full passes only


def test_the_probe_finds_a_kernel_that_errs_at_one_border_only(digits, monkeypatch):
    """Crops at the right border but not the bottom one, as oneDNN's AMX bf16 kernel got wrong (a strided
    convolution one output column wide): the probe must try such windows, not only corners of both."""
    net = inference_copy(build_model("small-cnn", digits.spec).eval())
    x = channels_last(to_float(digits.x_test[:8]))
    windowed = WindowedForward.of(net, x)
    assert windowed is not None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # exact here; float32 is not
        assert windowed.matches_full_passes(x, (1, 3, 5))
        convolve = WindowedForward._convolve

        def right_border_only(self, node, change):
            out = convolve(self, node, change)
            height, width = self.cache[node].shape[-2:]
            if out is not None and out[0][3] == width and out[0][1] < height:
                return out[0], out[1] + 1.0
            return out

        monkeypatch.setattr(WindowedForward, "_convolve", right_border_only)
        assert not windowed.matches_full_passes(x, (1, 3, 5))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_strided_convolution_on_a_crop_one_column_wide_is_exact(precision):
    """The crop shapes oneDNN's AMX bf16 kernel computed wrongly (3x3, stride 2, one output column): the
    windowed engine widens such windows to two columns, so their logits stay the full pass's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 128, 3, stride=2, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)).eval()
    x = channels_last(torch.rand(8, 3, 8, 8))
    windowed = WindowedForward.of(net, x)
    assert windowed is not None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        windowed.start(x)
        for top in range(7):
            candidate = x.clone()
            candidate[:, :, top : top + 1, 7:8] = 1 - candidate[:, :, top : top + 1, 7:8]
            logits, full = windowed.logits(candidate, (top, top + 1, 7, 8)), net(candidate)
            assert torch.equal(logits, full), top


def test_square_counts_a_windowed_success_once_a_full_pass_agrees(teacher_run, digits, monkeypatch):
    """Windowed logits that lie (here: negated, past a probe that says yes)
    never make a robust image fooled."""
    from agkd_bml.train import load_model

    net = inference_copy(load_model(teacher_run)[0])
    x, y = channels_last(to_float(digits.x_test[:32])), digits.y_test[:32]
    logits = WindowedForward.logits
    monkeypatch.setattr(WindowedForward, "matches_full_passes", lambda self, x, sides: True)
    monkeypatch.setattr(WindowedForward, "logits", lambda self, *a: -logits(self, *a))
    adv, fooled = square_mod.square(net, x, y, eps=0.1, queries=60,
                                    generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        wrong = net(adv).logits.argmax(1) != y
    assert torch.equal(fooled, wrong) and not fooled.all()


class _Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=2, dilation=2)

    def forward(self, x):
        return self.conv(x)


class _ValueBranch(nn.Module):
    """Control flow on values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        return (h if h.mean() > 0 else -h).mean((2, 3))


@pytest.mark.parametrize("arch", ["wrn-10-1", "preact-resnet18-w8"])
def test_residual_networks_are_windowed_exactly(arch, cifar_path):
    """The residual sum is element-wise: its window is the union of its
    branches' (the probe is bit for bit)."""
    spec, images = _images("cifar", cifar_path)
    net = inference_copy(_model(arch, spec))
    windowed = WindowedForward.of(net, images)
    assert windowed is not None
    with torch.inference_mode():
        assert windowed.matches_full_passes(images[:4], (1, 3, 5, 16))


def test_layers_it_cannot_follow_are_computed_whole(digits):
    """Past a layer it does not know (or a dilated or reflect-padded convolution) the rest runs on whole
    values: the logits stay the full pass's."""
    torch.manual_seed(0)
    x = channels_last(to_float(digits.x_test[:8]))
    for layer in (nn.MaxPool2d(2), nn.Conv2d(128, 128, 3, padding=2, dilation=2),
                  nn.Conv2d(128, 128, 1, stride=2),
                  nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect")):
        net = build_model("small-cnn", digits.spec).eval()
        net.backbone.append(layer)
        net = inference_copy(net)
        windowed = WindowedForward.of(net, x)
        assert windowed is not None, layer
        with torch.inference_mode():
            windowed.start(x)
            candidate = x.clone()
            candidate[:, :, 3:6, 4:7] = 0.5
            torch.testing.assert_close(windowed.logits(candidate, (3, 6, 4, 7)), net(candidate).logits)


def test_models_it_cannot_window_get_full_passes():
    x = channels_last(torch.rand(4, 3, 16, 16))
    assert WindowedForward.of(inference_copy(_ValueBranch()), x) is None  # not traceable
    first_layer_whole = nn.Sequential(_Dilated(), nn.Flatten(), nn.LazyLinear(10))
    first_layer_whole(x)
    assert WindowedForward.of(inference_copy(first_layer_whole), x) is None  # no convolution on a window
    assert WindowedForward.of(inference_copy(nn.Sequential(nn.Conv2d(3, 4, 3))), x) is None  # no logits out


def test_square_resumed_with_windowed_queries_gives_the_uninterrupted_search(
        teacher_run, digits, monkeypatch):
    """A resumed search rebuilds the cache from the saved best points and goes on to the same result."""
    from agkd_bml.attacks import Progress
    from agkd_bml.attacks.square import SquareAttack
    from agkd_bml.train import load_model

    model = load_model(teacher_run)[0]
    x, y = to_float(digits.x_test[:24]), digits.y_test[:24]
    sq = SquareAttack(name="square-300", eps=0.08, queries=300)
    calls = _count_windowed_queries(monkeypatch)
    reports: list[dict] = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = sq(model, x, y, torch.Generator().manual_seed(2), progress=Progress(None, reports.append))
        assert len(calls) > 250 and [r["query"] for r in reports] == [100, 200]
        for saved in reports:
            got = sq(model, x, y, torch.Generator().manual_seed(2), progress=Progress(saved, lambda _: None))
            assert torch.equal(got.images, want.images) and torch.equal(got.fooled, want.fooled)
    assert 0 < int(want.fooled.sum()) < x.shape[0]
