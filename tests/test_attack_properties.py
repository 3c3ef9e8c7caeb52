"""Attack properties under random settings, and agreement with torchattacks' reference PGD."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.torchattacks_adapter import LogitsOnly
from agkd_bml.data import to_float
from agkd_bml.evaluation import evaluate_attacks


def _check_attack(digits, model, attack, eps, train_mode, dtype, n=16):
    m = copy.deepcopy(model).to(dtype).train(train_mode)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    x = to_float(digits.x_test[:n]).to(dtype)
    y = digits.y_test[:n]
    adv, fooled = attack(m, x, y, torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert m.training == train_mode
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(p.requires_grad and torch.equal(p.grad, torch.ones_like(p)) for p in m.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # library attacks seed the global RNG; ours must not leak
    with torch.no_grad():  # the success mask is the eval-mode model's verdict on the returned images
        assert torch.equal(fooled, copy.deepcopy(m).eval()(adv).logits.argmax(1) != y)
    return adv


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(["fgsm", "bim", "pgd", "cw", "mim"]),
    steps=st.integers(1, 4),
    eps=st.floats(0.0, 0.5),
    train_mode=st.booleans(),
    targeted=st.booleans(),
    restarts=st.integers(1, 2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_every_gradient_attack_stays_in_budget_and_leaves_the_model_as_it_was(
    digits, model, family, steps, eps, train_mode, targeted, restarts, dtype
):
    spec = family if family == "fgsm" else f"{family}-{steps}"
    attack = parse_attacks(spec, eps=eps, targeted=targeted, restarts=restarts)[0]
    _check_attack(digits, model, attack, eps, train_mode, dtype)


@pytest.mark.parametrize("spec", ["apgd-ce", "apgd-t", "fab-t", "square-50", "spsa-2", "aa"])
@pytest.mark.parametrize(("train_mode", "dtype", "eps"),
                         [(False, torch.float32, 0.1), (True, torch.float64, 0.05)])
def test_every_library_attack_stays_in_budget_and_leaves_the_model_as_it_was(
    digits, teacher_run, spec, train_mode, dtype, eps
):
    from agkd_bml.train import load_model

    attack = parse_attacks(spec, eps=eps)[0]
    # library attacks skip points an (untrained) model already gets wrong
    trained, _ = load_model(teacher_run)
    adv = _check_attack(digits, trained, attack, eps, train_mode, dtype, n=8)
    if eps >= 0.1:  # at a small budget, Square and FAB may rightly return images they could not flip
        assert not torch.equal(adv, to_float(digits.x_test[:8]).to(dtype))  # it did perturb something


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
    ref = torchattacks.PGD(LogitsOnly(model).eval(), eps=8 / 255, alpha=2 / 255, steps=20, random_start=True)
    correct = []
    for i in range(0, 500, 250):
        adv = ref(to_float(x[i : i + 250]), y[i : i + 250])
        with torch.no_grad():
            # our convention: a point counts only if it is right clean and attacked
            correct.append((model(adv).logits.argmax(1) == y[i : i + 250]) & ours[0].correct[i : i + 250])
    theirs = torch.cat(correct).float().mean().item()
    assert ours[1].accuracy < ours[0].accuracy  # the attack does something
    assert abs(ours[1].accuracy - theirs) <= 0.01, (ours[1].accuracy, theirs)
