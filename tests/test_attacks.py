"""The projected-gradient routine: budget, direction, batching and side effects."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from agkd_bml.attacks import full_length, parse_attacks, pgd
from agkd_bml.data import to_float
from agkd_bml.errors import UserError


def _batch(digits, n=64):
    return to_float(digits.x_test[:n]), digits.y_test[:n]


def test_targeted_attack_lowers_target_ce_and_stays_in_ball(digits, model):
    x, y = _batch(digits)
    target = (y + 1) % 10
    eps = 0.1
    with torch.no_grad():
        before = F.cross_entropy(model(x).logits, target)
    adv = pgd(model, x, target, eps=eps, step_size=eps / 4, steps=10, targeted=True,
              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = F.cross_entropy(model(adv).logits, target)
    assert after < before
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_untargeted_pgd_raises_loss(digits, model):
    x, y = _batch(digits)
    adv = pgd(model, x, y, eps=0.1, step_size=0.025, steps=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert F.cross_entropy(model(adv).logits, y) > F.cross_entropy(model(x).logits, y)


@pytest.mark.parametrize("loss,momentum", [("ce", 0.0), ("cw", 0.0), ("ce", 1.0)])
def test_attack_leaves_model_untouched(digits, model, loss, momentum):
    x, y = _batch(digits, 16)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    state = copy.deepcopy(model.state_dict())
    pgd(model, x, y, eps=0.1, step_size=0.05, steps=2, loss=loss, momentum=momentum)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm running stats unchanged: eval mode inside
    for p in model.parameters():
        assert torch.all(p.grad == 0.5)


def test_batched_forward_backward_attack_equals_two_attacks(digits, model):
    model = model.double()
    x = to_float(digits.x_train[:32]).double()
    y = digits.y_train[:32]
    x_s, x_b = x[:16], x[16:]
    y_mc, s = (y[:16] + 3) % 10, y[:16]
    eps = 0.1
    noise = torch.rand(32, *x.shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    init = (noise * 2 - 1) * eps
    kw = dict(eps=eps, step_size=eps / 4, steps=3, targeted=True)
    both = pgd(model, x, torch.cat([y_mc, s]), init=init, **kw)
    fwd = pgd(model, x_s, y_mc, init=init[:16], **kw)
    bwd = pgd(model, x_b, s, init=init[16:], **kw)
    assert torch.allclose(both, torch.cat([fwd, bwd]), atol=1e-12)


def test_fgsm_has_one_full_step_and_bim_no_random_start():
    specs = {s.name: s for s in parse_attacks("clean,fgsm,bim-7,pgd-20,cw-20,mim-40", eps=8 / 255)}
    assert specs["fgsm"].steps == 1 and specs["fgsm"].step_size == pytest.approx(8 / 255)
    assert not specs["bim-7"].random_start and specs["pgd-20"].random_start
    assert specs["pgd-20"].step_size == pytest.approx(2 / 255)
    assert specs["cw-20"].loss == "cw" and specs["mim-40"].momentum == 1.0


def test_autoattack_uses_the_reference_parameters_not_torchattacks_defaults():
    aa = parse_attacks("aa", eps=8 / 255, num_classes=10)[0].settings()
    assert aa["apgd-ce"]["steps"] == 100 and aa["apgd-t"]["steps"] == 100 and aa["fab-t"]["steps"] == 100
    assert aa["apgd-t"]["target_classes"] == 9 and aa["fab-t"]["target_classes"] == 9
    assert aa["square"]["queries"] == 5000 and aa["cascade"] == "per-sample"
    assert parse_attacks("aa", eps=8 / 255, num_classes=100)[0].settings()["apgd-t"]["target_classes"] == 9
    assert parse_attacks("square", eps=8 / 255)[0].settings()["queries"] == 5000


@pytest.mark.parametrize(
    "text", ["pgd", "pgd-0", "foo-3", "fgsm-3", "", "aa-3", "spsa", "transfer:", "pgd-20,pgd-20", "apgd-x"]
)
def test_bad_attack_specs_are_user_errors(text):
    with pytest.raises(UserError):
        parse_attacks(text, eps=8 / 255)


def test_eps_in_pixel_units_is_caught():
    with pytest.raises(UserError, match="8/255"):
        parse_attacks("pgd-20", eps=8)


def _break_standard_model(model, data, n: int) -> None:
    from agkd_bml.evaluation import evaluate_attacks

    clean, fgsm, pgd20, cw20 = evaluate_attacks(model, data.x_test[:n], data.y_test[:n],
                                                parse_attacks("clean,fgsm,pgd-20,cw-20",
                                                              eps=data.spec.default_eps), seed=0)
    assert clean.accuracy > 0.6  # the model learned something, so the attacks have something to break
    assert pgd20.accuracy < 0.05 and cw20.accuracy < 0.05, (clean.accuracy, pgd20.accuracy, cw20.accuracy)
    assert fgsm.accuracy < clean.accuracy / 2


def test_attacks_break_a_standard_digits_model(digits, teacher_run):
    """On an undefended model PGD-20 and CW-20 leave < 5%, and FGSM is well below clean."""
    from agkd_bml.train import load_model

    _break_standard_model(load_model(teacher_run)[0], digits, 450)


@pytest.mark.slow
def test_attacks_break_a_standard_cifar_model(tmp_path, cifar_path):
    """Acceptance on CIFAR-10 (about 4 min): a standard small CNN trained 6 epochs on all 50,000 images.

    (Briefly trained CIFAR models are smooth enough to keep 5-7% under PGD-20 at 8/255, so the short fixtures
    of the default suite cannot stand in for "a standard model" here.) """
    from agkd_bml.config import TrainConfig
    from agkd_bml.data import load_dataset
    from agkd_bml.train import load_model, train

    cfg = TrainConfig.of(method="standard", dataset=f"npz:{cifar_path}", arch="small-cnn", epochs=6,
                         milestones=[4],
                      lr=0.05, val_n=0, device="cpu", out=str(tmp_path / "standard"))
    train(cfg, progress=False, log=lambda _m: None)
    _break_standard_model(load_model(tmp_path / "standard")[0], load_dataset(f"npz:{cifar_path}"), 1000)


def test_early_stop_counts_the_worst_iterate_and_is_never_weaker(digits, teacher_run):
    from agkd_bml.train import load_model

    model, _ = load_model(teacher_run)
    x, y = to_float(digits.x_test[:200]), digits.y_test[:200]
    kw = dict(eps=0.05, step_size=0.0125, steps=10)
    plain = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    early = pgd(model, x, y, generator=torch.Generator().manual_seed(0), stop_when_fooled=True, **kw)
    with torch.no_grad():
        right_plain = model(plain).logits.argmax(1) == y
        right_early = model(early).logits.argmax(1) == y
    assert (early - x).abs().max() <= 0.05 + 1e-6 and early.min() >= 0 and early.max() <= 1
    assert right_early.sum() <= right_plain.sum()
    assert right_early.sum() < right_early.numel()  # something was fooled (so the early path ran)
    with pytest.raises(ValueError):
        pgd(model, x, y, targeted=True, stop_when_fooled=True, **kw)


def test_transfer_runs_all_its_steps_on_the_source(model):
    """Stopping once the source is fooled would leave minimal, poorly transferring perturbations."""
    attack = parse_attacks("transfer:src", eps=8 / 255, load_source=lambda _p: model)[0]
    assert attack.inner.steps == 20 and not attack.inner.early_stop
    assert not full_length(parse_attacks("pgd-20", eps=8 / 255)[0]).early_stop
    assert parse_attacks("pgd-20", eps=8 / 255)[0].early_stop  # white-box evaluation does stop per image


def test_cw_loss_has_a_gradient_where_the_true_class_leads_by_65_and_clips_past_the_boundary_only():
    """The CW margin clips at 50 past the decision boundary (as the authors' code), never before it."""
    from agkd_bml.attacks import cw_margin

    logits = torch.tensor([[65.0, 0.0, -3.0], [0.0, 60.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    cw_margin(logits, labels).sum().backward()
    assert logits.grad[0].abs().sum() > 0  # true class ahead by 65: the attack still has a direction
    assert logits.grad[1].abs().sum() == 0  # another class ahead by 60 > 50: done
    logits.grad = None
    targets = torch.tensor([1, 1])  # targeted: descend, clipped once the target leads by 50
    cw_margin(logits, targets, targeted=True).sum().backward()
    assert logits.grad[0].abs().sum() > 0  # target behind by 65
    assert logits.grad[1].abs().sum() == 0  # target ahead by 59


def test_cw_pgd_moves_an_image_whose_true_class_leads_by_more_than_the_margin(teacher_run, digits):
    """Scaled so the true class leads by > 50: CW-PGD must still change the image (it did not, clipped)."""
    from agkd_bml.train import load_model

    model, _ = load_model(teacher_run)
    x = to_float(digits.x_test[:64])
    with torch.no_grad():
        model.fc.weight.mul_(100.0)  # a trained model with 100x its logits
        model.fc.bias.mul_(100.0)
        top = model(x).logits.topk(2, 1)
    far = (top.values[:, 0] - top.values[:, 1]) > 50
    assert far.sum() >= 8
    x, y = x[far], top.indices[far, 0]  # labelled as predicted: the true class leads by more than 50
    adv = pgd(model, x, y, eps=0.1, step_size=0.025, steps=1, random_start=False, loss="cw")
    assert (adv - x).abs().flatten(1).amax(1).min() > 0


def test_last_iterate_protocol_is_never_stronger_than_first_fooling_iterate(teacher_run, capsys):
    """``eval --last-iterate`` scores the paper's way; our default (first fooling
    iterate) is at least as strong."""
    from agkd_bml.cli import main

    args = ["eval", teacher_run, "--attacks", "clean,pgd-5", "--n", "64", "--eps", "0.03", "--no-progress"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main([*args, "--last-iterate"]) == 0
    last = capsys.readouterr().out
    assert "first fooling iterate" in first and "scored at its last iterate" in last

    def pgd_acc(text: str) -> float:
        row = next(line for line in text.splitlines() if line.startswith("| teacher"))
        return float(row.split("|")[3].split()[0])

    assert pgd_acc(first) <= pgd_acc(last)


def test_evaluation_attacks_with_cudnn_benchmark_off_and_restores_it(digits, model):
    """Attacks run on shrinking batches (PGD drops fooled images, AutoAttack attacks the survivors): with
    cuDNN's benchmark mode on, each new shape would be timed anew, so evaluation turns it off while it runs
    (training, with its fixed batch, keeps it) and restores it after."""
    from agkd_bml.evaluation import evaluate_attacks

    seen: list[bool] = []
    hook = model.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        evaluate_attacks(model, digits.x_test[:40], digits.y_test[:40], parse_attacks("pgd-3", eps=0.1))
        assert seen and not any(seen)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
        hook.remove()
