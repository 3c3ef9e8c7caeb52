"""Every architecture honours the one-forward contract: logits, last feature map, embedding."""

from __future__ import annotations

import pytest
import torch

from agkd_bml.data.datasets import DataSpec
from agkd_bml.errors import UserError
from agkd_bml.models import build_model


def _spec(channels=3, size=32, classes=10):
    return DataSpec(name="x", num_classes=classes, channels=channels, size=size, mean=(0.5,) * channels,
                    std=(0.25,) * channels, default_eps=8 / 255, class_names=tuple(map(str, range(classes))))


@pytest.mark.parametrize(
    "arch,size,hw",
    [("small-cnn", 32, 8), ("small-cnn", 16, 4), ("wrn-10-1", 32, 8), ("wrn-16-2", 16, 4),
     ("preact-resnet18", 32, 4), ("resnet50", 64, 8)],
)
def test_forward_contract(arch, size, hw):
    torch.manual_seed(0)
    m = build_model(arch, _spec(size=size)).eval()
    out = m(torch.rand(2, 3, size, size))
    assert out.logits.shape == (2, 10)
    assert out.features.shape[0] == 2 and out.features.shape[2:] == (hw, hw)
    assert torch.all(out.features >= 0)  # after the final BN-ReLU
    assert torch.allclose(out.embedding, out.features.mean((2, 3)))


def test_normalisation_is_inside_the_model():
    """The model holds the data's mean and std and its forward applies them: the
    backbone sees (x - mean) / std."""
    spec = _spec(channels=1, size=16)
    m = build_model("small-cnn", spec).eval()
    assert torch.allclose(m.mean.flatten(), torch.tensor([0.5]))
    assert torch.allclose(m.std.flatten(), torch.tensor([0.25]))
    seen = []
    m.backbone.register_forward_pre_hook(lambda _mod, args: seen.append(args[0]))
    x = torch.rand(3, 1, 16, 16)
    m(x)
    assert torch.allclose(seen[0], (x - 0.5) / 0.25)
    with torch.no_grad():
        m.mean.fill_(0.0)  # a changed buffer changes what the backbone sees: the forward reads it
    m(x)
    assert torch.allclose(seen[1], x / 0.25)


def test_a_channels_last_batch_gives_the_same_logits_and_input_gradients_bit_for_bit():
    """The normalisation follows the batch's layout for speed; the function must not change with it."""
    torch.manual_seed(0)
    m = build_model("small-cnn", _spec()).eval().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32)
    results = []
    for batch in (x.clone(), x.contiguous(memory_format=torch.channels_last)):
        batch.requires_grad_(True)
        logits = m(batch).logits
        (grad,) = torch.autograd.grad(logits[:, 0].sum(), batch)
        results.append((logits.detach(), grad.contiguous()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


@pytest.mark.parametrize("arch", ["wrn-15-2", "vgg16", "wrn-x-2"])
def test_unknown_arch_is_a_user_error(arch):
    with pytest.raises(UserError):
        build_model(arch, _spec())
