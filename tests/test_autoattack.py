"""Our batched AutoAttack parts against torchattacks' reference implementations, on real trained models."""

from __future__ import annotations

import copy

import pytest
import torch

from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.apgd import CPU_BF16_ROWS, apgd, apgd_multitarget, dlr_targeted, target_classes
from agkd_bml.attacks.autoattack import native_components, torchattacks_component
from agkd_bml.attacks.engines import Bf16Search, confirm
from agkd_bml.attacks.fab import PROJECTIONS, FabAttack
from agkd_bml.attacks.norms import LINF
from agkd_bml.attacks.square import square_fraction
from agkd_bml.attacks.torchattacks_adapter import run_library_attack
from agkd_bml.data import load_dataset, to_float
from agkd_bml.evaluation import evaluate_attacks
from agkd_bml.models import onednn
from agkd_bml.models.inference import ConvReLU, inference_copy


@pytest.fixture(scope="module")
def trained(teacher_run):
    from agkd_bml.train import load_model

    return load_model(teacher_run)[0]


def _wrong(model, adv, y):
    with torch.no_grad():
        return model(adv).logits.argmax(1) != y


def test_inference_copy_computes_the_same_function_and_leaves_the_model_alone(digits, trained):
    model = copy.deepcopy(trained).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded into the convs
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x = to_float(digits.x_test[:64])
    with torch.no_grad():
        ref = model.eval()(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_conv_relu_passes_match_the_unfused_network(digits, trained):
    """The inference copy's forward-only passes run conv + ReLU as one oneDNN call; gradient passes do not."""
    fast = inference_copy(trained)
    fused = [m for m in fast.modules() if isinstance(m, ConvReLU)]
    assert fused and not any(isinstance(m, torch.nn.ReLU) for m in fast.modules())
    plain = copy.deepcopy(fast)
    for m in plain.modules():  # the same network with each pair as separate modules
        for name, child in m.named_children():
            if isinstance(child, ConvReLU):
                setattr(m, name, torch.nn.Sequential(child.conv, torch.nn.ReLU()))
    x = to_float(digits.x_test[:64]).contiguous(memory_format=torch.channels_last)
    for precision in (torch.float32, torch.bfloat16):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                    enabled=precision == torch.bfloat16):
            torch.testing.assert_close(fast(x).logits, plain(x).logits, rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fast(xg).logits[:, 0].sum(), xg)
    xp = x.clone().requires_grad_(True)
    (grad_plain,) = torch.autograd.grad(plain(xp).logits[:, 0].sum(), xp)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, grad_plain)


def test_the_fused_call_is_behind_a_probe_and_a_switch_and_both_paths_give_the_same_logits(digits, trained,
                                                                                           monkeypatch):
    """The private oneDNN op is used only where its probe passed and it is switched on; off, every pass takes
    the public path, with the same logits (float32 and bf16)."""
    if onednn.fused_conv_relu() is None:
        pytest.skip("no oneDNN fused convolution in this PyTorch build")
    calls = []
    op = onednn.fused_conv_relu()
    monkeypatch.setitem(onednn._state, "op", lambda *a: calls.append(1) or op(*a))  # a counting wrapper
    fast = inference_copy(trained)
    x = to_float(digits.x_test[:64]).contiguous(memory_format=torch.channels_last)
    logits = {}
    for enabled in (True, False):
        onednn.set_enabled(enabled)
        try:
            for bf16 in (False, True):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits[enabled, bf16] = fast(x).logits.float()
        finally:
            onednn.set_enabled(True)
        assert bool(calls) == enabled, enabled
        calls.clear()
    for bf16 in (False, True):
        torch.testing.assert_close(logits[True, bf16], logits[False, bf16], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    assert onednn.fused_conv_relu() is None


class _StandardisedConv(torch.nn.Conv2d):
    """A convolution whose forward differs from its weights' plain use (weight standardisation)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_the_inference_copy_leaves_subclassed_layers_alone():
    torch.manual_seed(0)
    net = torch.nn.Sequential(_StandardisedConv(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8).eval(),
                              torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
    fast = inference_copy(net)
    assert isinstance(fast[0], _StandardisedConv) and isinstance(fast[1], torch.nn.BatchNorm2d)  # not folded
    assert isinstance(fast[3], ConvReLU)  # the plain pair is fused
    x = torch.rand(4, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), net.eval()(x))


def test_fab_t_finds_exactly_what_torchattacks_fab_t_finds(digits, trained):
    """FAB-T's first restart is deterministic: ours (batched targets, no extra
    forward) must flip the same images."""
    eps = 0.06
    x, y = to_float(digits.x_test[:120]), digits.y_test[:120]
    ours = FabAttack(name="fab-t", eps=eps, num_classes=10)(trained, x, y).images
    theirs = run_library_attack(torchattacks_component("fab-t", eps, 10), trained, x, y, eps=eps,
                                generator=None)
    ours_wrong, theirs_wrong = _wrong(trained, ours, y), _wrong(trained, theirs, y)
    assert 0 < int(theirs_wrong.sum()) < 110  # the budget leaves both outcomes possible
    assert int((ours_wrong != theirs_wrong).sum()) <= 2, (int(ours_wrong.sum()), int(theirs_wrong.sum()))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("quantised", [False, True])
def test_fab_projection_equals_the_reference_routine(quantised, norm):
    """Our projections (L-inf: bisection + Newton; L2: closed form from the sorted kinks) give the reference's
    sorted solution: on the plane, in the box, same step."""
    from torchattacks.attacks import fab as reference

    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, 768, generator=g)
    if quantised:  # pixel values: many equal rooms, the sort's ties
        t = (t * 255).round() / 255
    w = torch.randn(64, 768, generator=g) * (torch.rand(64, 768, generator=g) > 0.1)
    # gaps from tiny to beyond what the box allows, both orientations
    b = (w * t).sum(1) + torch.randn(64, generator=g) * torch.logspace(-3, 3.5, 64)
    ours, ref = PROJECTIONS[norm](t, w, b), getattr(reference, f"projection_{norm}")(t, w.clone(), b)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    feasible = (w.abs() * torch.where(w * torch.sign((w * t).sum(1) - b)[:, None] > 0, t, 1 - t)).sum(1) > \
        ((w * t).sum(1) - b).abs()
    assert 8 < int(feasible.sum()) < 64  # both branches are exercised
    assert ((w * (t + ours)).sum(1) - b)[feasible].abs().max() < 1e-3
    assert (t + ours).min() >= -1e-6 and (t + ours).max() <= 1 + 1e-6


@pytest.mark.parametrize("spec", ["apgd-ce", pytest.param("apgd-t", marks=pytest.mark.slow), "square-300"])
def test_randomised_parts_match_torchattacks_in_success_rate(digits, trained, spec):
    eps, n = 0.04, 300
    x, y = to_float(digits.x_test[:n]), digits.y_test[:n]
    ours = parse_attacks(spec, eps=eps)[0](trained, x, y, torch.Generator().manual_seed(0)).images
    name = spec.split("-3")[0]
    make = torchattacks_component(name, eps, 10)
    if name == "square":
        def make(m, seed, _base=make):
            attack = _base(m, seed)
            attack.n_queries = 300
            return attack
    theirs = run_library_attack(make, trained, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    a, b = float(_wrong(trained, ours, y).float().mean()), float(_wrong(trained, theirs, y).float().mean())
    assert 0.05 < b < 0.95, b
    assert abs(a - b) <= 0.04, (a, b)


def test_apgd_early_stop_and_target_batching_change_nothing_but_cost(digits, trained):
    """An image's trajectory depends on itself only: attacking a subset from the same starts gives those
    images the same result, whatever the other images did (left early or not)."""
    model = inference_copy(trained)
    x, y = to_float(digits.x_test[:60]), digits.y_test[:60]
    start = LINF.surface_start(x, 0.03, torch.Generator().manual_seed(1))
    full, fooled = apgd(model, x, y, eps=0.03, steps=20, start=start)
    assert 5 < int(fooled.sum()) < 55
    half, fooled_half = apgd(model, x[30:], y[30:], eps=0.03, steps=20, start=start[30:])
    assert int((fooled_half != fooled[30:]).sum()) <= 1
    same = fooled_half == fooled[30:]
    torch.testing.assert_close(half[same], full[30:][same], atol=1e-5, rtol=0)
    adv, hit = apgd_multitarget(model, x, y, eps=0.03, steps=20, count=3,
                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(hit, _wrong(model, adv, y)) and int(hit.sum()) > 0


def test_multi_target_batches_stack_targets_under_bf16_on_a_cpu(digits, trained):
    """A bf16 pass of a few dozen rows is short of work on a CPU: under bf16 autocast the targets go in groups
    of about CPU_BF16_ROWS rows (float32 keeps one target at a time); each image is still broken or not."""
    model = inference_copy(trained)
    x, y = to_float(digits.x_test[:40]), digits.y_test[:40]
    for precision, group in ((torch.float32, 1), (torch.bfloat16, CPU_BF16_ROWS // 40)):
        rows: list[int] = []
        hook = model.register_forward_hook(lambda m, args, out, seen=rows: seen.append(args[0].shape[0]))
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
                adv, hit = apgd_multitarget(model, x, y, eps=0.03, steps=5, count=9,
                                            generator=torch.Generator().manual_seed(1))
                wrong = _wrong(model, adv, y)  # in the precision it searched in
        finally:
            hook.remove()
        assert rows[1] == group * 40  # the first group's first pass, after the pass that picks the targets
        assert torch.equal(hit, wrong) and 0 < int(hit.sum()) < 40


def test_dlr_targeted_and_targets_follow_the_reference_definitions():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 6.0]])
    y, t = torch.tensor([0, 4]), torch.tensor([1, 3])
    # -(z_y - z_t) / (z_max - (z_3rd + z_4th) / 2)
    torch.testing.assert_close(dlr_targeted(logits, y, t),
                               torch.tensor([-(5 - 4) / (5 - 2.5), -(6 - 4) / (6 - 2.5)]))
    assert target_classes(logits, 2).tolist() == [[1, 2], [3, 2]]
    assert (square_fraction(0, 5000) == 0.8 and square_fraction(20, 5000) == 0.4
            and square_fraction(4999, 5000) == 0.8 / 512)


def _cifar_autoattacks(cifar_pgd_at, cifar_path, specs: str) -> list:
    from agkd_bml.data import load_dataset

    model, _ = cifar_pgd_at
    data = load_dataset(f"npz:{cifar_path}")
    return evaluate_attacks(model, data.x_test[:100], data.y_test[:100], parse_attacks(specs, eps=8 / 255),
                            seed=0)


def _agree(runs, theirs) -> None:
    assert theirs.accuracy >= 0.03  # some images survive, so agreement is not trivially at 0%
    for run in runs:
        assert abs(run.accuracy - theirs.accuracy) <= 0.02, (run.attack.name, run.accuracy, theirs.accuracy)
        assert int((run.correct != theirs.correct).sum()) <= 4


@pytest.mark.slow
def test_native_autoattack_matches_the_torchattacks_composition_and_beats_pgd20(cifar_pgd_at, cifar_path):
    """Same model and images: our AutoAttack (float32, and the bf16 search with its float32 confirmation) and
    the torchattacks cascade agree to within 2 images in 100 (the float32 one agrees with the reference image
    for image: test_public_api), and AutoAttack leaves no more images robust than PGD-20 on a PGD-AT model.
    Slow (about a minute): the default suite checks the bf16 search's confirmation on the digits model."""
    specs = "pgd-20,aa,aa-bf16,aa-torchattacks"
    pgd20, ours, bf16, theirs = _cifar_autoattacks(cifar_pgd_at, cifar_path, specs)
    _agree([ours, bf16], theirs)
    assert pgd20.accuracy > 0.05  # adversarial training left something for AutoAttack to attack
    assert ours.accuracy <= pgd20.accuracy


def test_a_success_that_does_not_hold_in_fp32_gets_the_part_again_in_fp32(digits, trained):
    """``aa-bf16``'s check: flagged points the float32 model still gets right are re-attacked in float32."""
    fast = inference_copy(trained)
    x, y = to_float(digits.x_test[:80]), digits.y_test[:80]
    right = ~_wrong(fast, x, y)
    x, y = x[right], y[right]
    part = native_components(0.06, 10)["apgd-ce"]
    flagged = torch.ones(len(y), dtype=torch.bool)  # every clean image claimed broken: none is
    gen = torch.Generator().manual_seed(3)
    adv, fooled = confirm(lambda m, xs, ys: part.run_prepared(m, xs, ys, gen), fast, x, y, x.clone(), flagged)
    direct, direct_fooled = part.run_prepared(fast, x, y, torch.Generator().manual_seed(3))
    assert 0 < int(direct_fooled.sum()) < len(y)
    assert torch.equal(fooled, direct_fooled) and torch.equal(adv[fooled], direct[fooled])
    assert _wrong(fast, adv[fooled], y[fooled]).all()


def test_bf16_search_runs_under_autocast_and_redoes_in_float32_what_float32_does_not_confirm(digits, trained):
    """The wrapper owns the precision: the search under bf16 autocast, the
    confirmation and the redo without."""
    fast = inference_copy(trained)
    x, y = to_float(digits.x_test[:40]), digits.y_test[:40]
    part = native_components(0.06, 10)["apgd-ce"]
    seen = []

    def run(kind: str, claim_all: bool):
        def attack(m, xs, ys):
            seen.append((kind, torch.is_autocast_enabled("cpu")))
            adv, fooled = part.run_prepared(m, xs, ys, torch.Generator().manual_seed(0))
            return (xs.clone(), torch.ones_like(fooled)) if claim_all else (adv, fooled)
        return attack

    adv, fooled = Bf16Search(torch.device("cpu"))(run("search", True), run("redo", False), fast, x, y)
    assert seen[0] == ("search", True) and seen[1:] == [("redo", False)]
    assert 0 < int(fooled.sum()) < len(y) and _wrong(fast, adv[fooled], y[fooled]).all()


def test_untargeted_dlr_equals_the_reference_formula():
    import torchattacks

    from agkd_bml.attacks.apgd import dlr

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 10, generator=gen) * 3, torch.randint(0, 10, (64,), generator=gen)
    labels[:8] = logits[:8].argmax(1)  # rows where the label leads (the second logit is the other class)
    ref = torchattacks.APGD(torch.nn.Identity(), loss="dce").dlr_loss(logits, labels)
    assert torch.allclose(dlr(logits, labels), ref, atol=1e-6)


def test_eot_on_a_deterministic_model_finds_what_one_pass_finds(model, digits):
    """Averaging 5 identical gradients is the gradient: EoT changes nothing on a deterministic model."""
    from agkd_bml.attacks.apgd import apgd
    from agkd_bml.data import to_float

    x, y = to_float(digits.x_test[:32]), digits.y_test[:32]
    one = apgd(model, x, y, eps=0.1, steps=10, loss_name="dlr", generator=torch.Generator().manual_seed(1))
    five = apgd(model, x, y, eps=0.1, steps=10, loss_name="dlr", eot=5,
                generator=torch.Generator().manual_seed(1))
    assert torch.equal(one[1], five[1]) and torch.allclose(one[0], five[0], atol=1e-6)


def test_the_inference_copy_folds_and_fuses_through_a_models_own_forward(cifar_path):
    """A PreAct ResNet-18 from outside (its own forward: functional ReLUs, a ``+=`` shortcut) is traced: each
    BatchNorm that only a convolution feeds is folded into it and each such ReLU fused, with the same logits
    and input gradients; the BatchNorms after a residual sum stay."""
    from agkd_bml.models.external import load_external

    torch.manual_seed(0)
    data = load_dataset(f"npz:{cifar_path}")
    net = load_external("py:benchmarks/preact_resnet18.py:make_w16",
                        normalize=(data.spec.mean, data.spec.std))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    fast = inference_copy(net)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, ConvReLU) for m in fast.modules()) == 8 and batchnorms == 9  # of 17: 8 folded
    x = to_float(data.x_test[:16])
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)).logits,
                                   net(x).logits,
                                   rtol=1e-4, atol=1e-4)
    grads = []
    for model, layout in ((net, torch.contiguous_format), (fast, torch.channels_last)):
        xg = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        grads.append(torch.autograd.grad(model(xg).logits.gather(1, data.y_test[:16, None]).sum(), xg)[0])
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
