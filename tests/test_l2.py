"""The L2 threat model: its pieces, and our L2 attacks against torchattacks' L2 classes on a trained model.

(FAB's L2 projection is checked against the reference routine with the L-inf one, in test_autoattack.py.) """

from __future__ import annotations

import json

import pytest
import torch

import agkd_bml
from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.norms import L2_NORM, default_l2_eps
from agkd_bml.attacks.torchattacks_adapter import run_library_attack
from agkd_bml.cli import main
from agkd_bml.data import to_float
from agkd_bml.errors import UserError
from agkd_bml.evaluation import evaluate_attacks


@pytest.fixture(scope="module")
def trained(teacher_run):
    from agkd_bml.train import load_model

    return load_model(teacher_run)[0]


def _sizes(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


def test_l2_start_step_and_projection_stay_in_the_ball_and_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    eps = 0.5
    start = L2_NORM.random_start(x, eps, g)
    assert _sizes(start).max() <= eps + 1e-6 and _sizes(start).std() > 0.05  # radius drawn, not fixed
    assert torch.allclose(_sizes(L2_NORM.step(torch.randn(64, 3, 8, 8, generator=g))), torch.ones(64))
    far = x + torch.randn(64, 3, 8, 8, generator=g)
    p = L2_NORM.project(far, x, eps)
    assert _sizes(p - x).max() <= eps + 1e-6 and p.min() >= 0 and p.max() <= 1
    near = L2_NORM.project(x + 0.01 * torch.randn(64, 3, 8, 8, generator=g), x, eps)
    torch.testing.assert_close(L2_NORM.project(near, x, eps), near)  # points inside stay where they are
    # APGD's start lies on the sphere before clipping: in the box's interior, exactly eps away
    inner = torch.full((8, 3, 8, 8), 0.5)
    torch.testing.assert_close(_sizes(L2_NORM.surface_start(inner, 0.2, g) - inner), torch.full((8,), 0.2))
    assert default_l2_eps(3, 32) == 0.5 and abs(default_l2_eps(1, 8) - 0.5 * (64 / 3072) ** 0.5) < 1e-12


@pytest.mark.parametrize("spec", ["pgd-20", "apgd-ce", "square-300"])
def test_l2_parts_match_torchattacks_in_success_rate(digits, trained, spec):
    import torchattacks

    from agkd_bml.attacks.autoattack import torchattacks_component

    eps, n = 0.4, 300
    x, y = to_float(digits.x_test[:n]), digits.y_test[:n]
    ours = parse_attacks(spec, eps=eps, norm="l2")[0](trained, x, y, torch.Generator().manual_seed(0))
    assert float(_sizes(ours.images - x).max()) <= eps + 1e-5
    if spec == "pgd-20":
        def make(m, seed):
            return torchattacks.PGDL2(m, eps=eps, alpha=eps / 4, steps=20, random_start=True)
    else:
        name = spec.split("-3")[0]
        base = torchattacks_component(name, eps, 10, L2_NORM)

        def make(m, seed):
            attack = base(m, seed)
            if name == "square":
                attack.n_queries = 300
            return attack
    theirs = run_library_attack(make, trained, x, y, eps=eps, generator=torch.Generator().manual_seed(0),
                                norm=L2_NORM)
    with torch.no_grad():
        b = float((trained(theirs).logits.argmax(1) != y).float().mean())
    a = float(ours.fooled.float().mean())
    assert 0.05 < b < 0.95, b
    assert abs(a - b) <= 0.04, (a, b)


# its parts are checked one by one in the default suite (test_l2_parts_match_torchattacks...)
@pytest.mark.slow
def test_autoattack_l2_matches_the_torchattacks_l2_cascade(digits, trained):
    """Same model and images: our AutoAttack-L2 and torchattacks' L2 parts as the same
    cascade agree to 1 image in 60."""
    x, y = digits.x_test[:60], digits.y_test[:60]
    ours, theirs = evaluate_attacks(trained, x, y, parse_attacks("aa,aa-torchattacks", eps=0.6, norm="l2"),
                                    seed=0)
    assert 0.03 <= theirs.accuracy <= 0.9, theirs.accuracy  # neither outcome is trivial
    assert int((ours.correct != theirs.correct).sum()) <= 1, (ours.accuracy, theirs.accuracy)
    assert "L2 eps 0.6" in ours.attack.describe()


def test_eval_norm_l2_uses_the_l2_budget_and_says_so(teacher_run, digits, tmp_path, capsys):
    eps = default_l2_eps(digits.spec.channels, digits.spec.size)
    main(["eval", teacher_run, "--norm", "l2", "--attacks", "clean,fgsm,pgd-5", "--n", "50", "--no-progress",
          "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"L2 eps {eps:.4g}" in out and "L2-normalised step(s)" in out
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert ({r["norm"] for r in summary["results"]} == {"l2"} and summary["results"][1]["eps"]
            == pytest.approx(eps))
    assert all(r["accuracy"] <= summary["results"][0]["accuracy"] for r in summary["results"])
    # the same command in L-inf is a different point of the same state folder, not a mix-up
    main(["eval", teacher_run, "--attacks", "clean,pgd-5", "--n", "50", "--no-progress", "--out",
          str(tmp_path / "linf"),
          "--state", str(tmp_path / "state")])
    assert "L-inf eps" in capsys.readouterr().out
    linf = json.loads((tmp_path / "linf" / "eval.json").read_text())
    assert {r["norm"] for r in linf["results"]} == {"linf"}


def test_l2_through_the_api_and_what_l2_refuses(trained, digits):
    x, y = digits.x_test[:40], digits.y_test[:40]
    got = agkd_bml.evaluate(trained, x, y, attacks="clean,pgd-5", norm="l2")
    assert got.results[1].attack.norm is L2_NORM and got.results[1].attack.eps == pytest.approx(
        default_l2_eps(digits.spec.channels, digits.spec.size))
    bench = agkd_bml.evaluate_dataset(trained, dataset="digits", n=40, attacks="clean,pgd-5", norm="l2")
    assert torch.equal(bench.robust["pgd-5"], got.robust["pgd-5"])  # the same default budget by both entries
    assert bench.robustbench()["threat_model"] == "L2"
    with pytest.raises(UserError, match="L-inf threat model only"):
        parse_attacks("spsa-10", eps=0.5, norm="l2")
    with pytest.raises(UserError, match="unknown norm"):
        parse_attacks("pgd-5", eps=0.5, norm="l1")
