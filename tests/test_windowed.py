"""Square's windowed queries: only what the changed square reaches is recomputed, with the full pass's logits."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from agkd_bml.attacks import square as square_mod
from agkd_bml.data import load_dataset, to_float
from agkd_bml.models import build_model
from agkd_bml.models.inference import channels_last, inference_copy
from agkd_bml.models.windowed import WindowedForward


def _images(name: str, cifar_path: str) -> tuple[object, torch.Tensor]:
    data = load_dataset(f"npz:{cifar_path}" if name == "cifar" else "digits")
    return data.spec, channels_last(to_float(data.x_test[:24]))


@pytest.mark.parametrize("data", ["digits", "cifar"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_windowed_logits_are_the_full_passes_through_accepts_and_dropped_rows(data, precision, cifar_path):
    """Random windows (borders, 1 pixel to the whole image), random acceptances and rows leaving, as in Square:
    bit for bit where the probe says so, else to float rounding (then Square would not use them)."""
    torch.manual_seed(0)
    spec, images = _images(data, cifar_path)
    net = inference_copy(build_model("small-cnn", spec).eval())
    windowed = WindowedForward.of(net)
    assert windowed is not None and len(windowed.layers) == 4
    size = images.shape[-1]
    rng = random.Random(0)
    best = images.clone()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        exact = windowed.matches_full_passes(images[:8], tuple(range(1, size + 1)))
        check = torch.equal if exact else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(windowed.start(best), net(best).logits)
        for query in range(60):
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
    """Layers the inference copy leaves unfused: a 1x1 convolution (a pointwise window), a 3x3 one without
    ReLU, and a ReLU of its own."""
    torch.manual_seed(0)
    net = build_model("small-cnn", digits.spec).eval()
    net.backbone.extend([nn.Conv2d(128, 128, 1), nn.Conv2d(128, 128, 3, padding=1), nn.Sequential(nn.ReLU())])
    net = inference_copy(net)
    windowed = WindowedForward.of(net)
    assert windowed is not None and [type(layer.module) for layer in windowed.layers][-3:] == [
        nn.Conv2d, nn.Conv2d, nn.ReLU]
    x = channels_last(to_float(digits.x_test[:16]))
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
            monkeypatch.setattr(WindowedForward, "of", classmethod(lambda cls, model: None))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bit-exact windows here (the probe would say if not)
            runs.append(square_mod.square(net, x, y, eps=0.1, queries=300, generator=torch.Generator().manual_seed(0)))
        counts.append(len(calls))
    assert counts[0] > 250 and counts[1] == counts[0]  # nearly every query windowed, then none
    (windowed_adv, windowed_fooled), (adv, fooled) = runs
    assert 0 < int(fooled.sum()) < x.shape[0]  # some found, some not: the searches did work
    assert torch.equal(windowed_adv, adv) and torch.equal(windowed_fooled, fooled)


def test_square_falls_back_to_full_passes_when_windows_round_differently(teacher_run, digits, monkeypatch):
    from agkd_bml.models import windowed as windowed_mod
    from agkd_bml.train import load_model

    net = inference_copy(load_model(teacher_run)[0])
    x, y = channels_last(to_float(digits.x_test[:16])), digits.y_test[:16]
    unpadded = windowed_mod._Layer.unpadded
    monkeypatch.setattr(windowed_mod._Layer, "unpadded", lambda self, h: unpadded(self, h) * (1 + 2**-20))
    calls = _count_windowed_queries(monkeypatch)
    square_mod.square(net, x, y, eps=0.1, queries=50, generator=torch.Generator().manual_seed(0))
    assert calls and len(calls) <= 1  # the probe's first window differed, then full passes only


class _Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=2, dilation=2)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("arch", ["wrn-10-1", "preact-resnet18"])
def test_networks_that_are_not_a_plain_chain_get_full_passes(arch, digits):
    assert WindowedForward.of(inference_copy(build_model(arch, digits.spec).eval())) is None


def test_layers_it_cannot_follow_get_full_passes(digits):
    net = inference_copy(build_model("small-cnn", digits.spec).eval())
    assert WindowedForward.of(net) is not None
    for layer in (nn.MaxPool2d(2), nn.Conv2d(128, 128, 3, padding=2, dilation=2), nn.Conv2d(128, 128, 1, stride=2),
                  nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect"), _Dilated()):
        other = inference_copy(net)
        other.backbone.append(layer)
        assert WindowedForward.of(other) is None, layer
    assert WindowedForward.of(nn.Sequential(nn.Conv2d(3, 4, 3))) is None  # not a Classifier: unknown head


def test_square_resumed_with_windowed_queries_gives_the_uninterrupted_search(teacher_run, digits, monkeypatch):
    """A resumed search rebuilds the cache from the saved best points and goes on to the same result."""
    from agkd_bml.attacks import Progress
    from agkd_bml.attacks.square import SquareAttack
    from agkd_bml.train import load_model

    model = load_model(teacher_run)[0]
    x, y = to_float(digits.x_test[:24]), digits.y_test[:24]
    sq = SquareAttack("square-300", 0.08, queries=300)
    calls = _count_windowed_queries(monkeypatch)
    reports: list[dict] = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = sq(model, x, y, torch.Generator().manual_seed(2), progress=Progress(None, reports.append))
        assert len(calls) > 250 and [r["query"] for r in reports] == [100, 200]
        for saved in reports:
            got = sq(model, x, y, torch.Generator().manual_seed(2), progress=Progress(saved, lambda _: None))
            assert torch.equal(got.images, want.images) and torch.equal(got.fooled, want.fooled)
    assert 0 < int(want.fooled.sum()) < x.shape[0]
