"""Attack properties under random settings, and agreement with torchattacks' reference PGD."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from agkd_bml.attacks import parse_attacks
from agkd_bml.data import to_float
from agkd_bml.evaluate import evaluate_attacks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(["fgsm", "bim", "pgd", "cw", "mim"]),
    steps=st.integers(1, 4),
    eps=st.floats(0.0, 0.5),
    train_mode=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_every_attack_stays_in_budget_and_leaves_the_model_as_it_was(digits, model, family, steps, eps, train_mode, dtype):
    spec = parse_attacks(family if family == "fgsm" else f"{family}-{steps}", eps=eps)[0]
    m = copy.deepcopy(model).to(dtype).train(train_mode)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = to_float(digits.x_test[:16]).to(dtype)
    adv = spec.run(m, x, digits.y_test[:16], torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert m.training == train_mode
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in m.parameters())


class _Logits(nn.Module):
    """torchattacks expects a model that returns logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


@pytest.fixture(scope="module")
def cifar_pgd_at(tmp_path_factory, cifar_path):
    from agkd_bml.config import TrainConfig
    from agkd_bml.train import load_model, train

    out = tmp_path_factory.mktemp("ta") / "pgd-at"
    cfg = TrainConfig(method="pgd-at", dataset=f"npz:{cifar_path}", arch="small-cnn", epochs=1, train_limit=2000,
                      steps=3, val_n=0, device="cpu", out=str(out))
    train(cfg, progress=False, log=lambda _m: None)
    return load_model(out)


def test_our_pgd20_agrees_with_torchattacks_on_500_images(cifar_pgd_at, cifar_path):
    torchattacks = pytest.importorskip("torchattacks")
    from agkd_bml.data import load_dataset

    model, _ = cifar_pgd_at
    data = load_dataset(f"npz:{cifar_path}")
    x, y = data.x_test[:500], data.y_test[:500]
    ours = evaluate_attacks(model, x, y, parse_attacks("clean,pgd-20", eps=8 / 255), batch_size=250, seed=0)
    torch.manual_seed(0)
    # eval(): torchattacks restores the wrapper's own train/eval mode after attacking, and a fresh
    # module is in train mode, which would leave BatchNorm on batch statistics.
    ref = torchattacks.PGD(_Logits(model).eval(), eps=8 / 255, alpha=2 / 255, steps=20, random_start=True)
    correct = []
    for i in range(0, 500, 250):
        adv = ref(to_float(x[i : i + 250]), y[i : i + 250])
        with torch.no_grad():
            correct.append(model(adv).logits.argmax(1) == y[i : i + 250])
    theirs = torch.cat(correct).float().mean().item()
    assert ours[1].accuracy < ours[0].accuracy  # the attack does something
    assert abs(ours[1].accuracy - theirs) <= 0.01, (ours[1].accuracy, theirs)
