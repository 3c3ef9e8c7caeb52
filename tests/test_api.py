"""The Python API: README's example runs as written, and any nn.Module gets
the same numbers as our CLI path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import agkd_bml
from agkd_bml.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its api-example block"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README api-example", "exec"), {})
    out = capsys.readouterr().out
    assert "| model | clean | pgd-20 | aa | worst-case |" in out and "images robust under AutoAttack" in out
    summary = json.loads((tmp_path / "runs" / "api-eval" / "eval.json").read_text())
    rb = summary["models"]["model"]["robustbench"]
    assert (rb["threat_model"] == "Linf" and rb["n_examples"] == 200 and float(rb["autoattack_acc"])
            <= float(rb["clean_acc"]))
    assert any((tmp_path / "runs" / "api-state").glob("*.pt"))


def test_api_agrees_with_our_own_models_and_normalises(teacher_run, digits):
    """A checkpoint evaluated through the API equals the library call; normalize= wraps a normalised model."""
    from agkd_bml.attacks import parse_attacks
    from agkd_bml.evaluation import evaluate_attacks
    from agkd_bml.models.checkpoint import load_model

    model = load_model(teacher_run)[0]
    x, y = digits.x_test[:64], digits.y_test[:64]
    got = agkd_bml.evaluate(model, x, y, attacks="clean,pgd-5", eps=0.1)
    want = evaluate_attacks(model, x, y, parse_attacks("pgd-5", eps=0.1, num_classes=10), seed=0)
    assert torch.equal(got.robust["pgd-5"], want[0].correct)
    assert 0 < got.accuracy["pgd-5"] <= got.accuracy["clean"]

    class Raw(torch.nn.Module):  # the same network, fed normalised inputs by the wrapper
        def forward(self, z):
            return model.fc(model.backbone(z).mean(dim=(2, 3)))

    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    wrapped = agkd_bml.evaluate(Raw(), x.float() / 255, y, attacks="clean", normalize=(mean, std), eps=0.1)
    assert torch.equal(wrapped.robust["clean"], got.robust["clean"])


def test_api_refuses_bad_input_in_one_line(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    x, y = digits.x_test[:8], digits.y_test[:8]
    for kwargs, message in ((dict(x=x.float(), y=y), "lie in"), (dict(x=x[:, 0], y=y), "N, C, H, W"),
                            (dict(x=x, y=y[:4]), "one label per image"), (dict(x=x, y=y, norm="l3"), "norm")):
        with pytest.raises(UserError, match=message):
            agkd_bml.evaluate(model, **{"attacks": "clean", **kwargs})
    with pytest.raises(UserError, match="outputs per image"):
        agkd_bml.evaluate(model, x, y, attacks="clean", num_classes=3)


def test_default_budget_follows_the_images_not_a_constant(tmp_path):
    """Without eps, the API takes the budget from one rule: MNIST-shaped images get 0.3, CIFAR-shaped 8/255,
    and evaluate_dataset() the dataset's own (the digits' 0.1), as `agkd-bml eval` does."""
    torch.manual_seed(0)
    for shape, want in (((1, 28, 28), 0.3), ((3, 32, 32), 8 / 255)):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(shape).prod()), 10))
        x, y = torch.rand(8, *shape), torch.arange(8)
        got = agkd_bml.evaluate(model, x, y, attacks="clean,fgsm")
        assert got.results[1].attack.eps == pytest.approx(want)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    got = agkd_bml.evaluate_dataset(model, dataset="digits", n=8, attacks="clean,fgsm")
    assert got.results[1].attack.eps == pytest.approx(0.1)


def test_the_import_layers_contract_is_exhaustive():
    """Every top-level module of the package has its place in the layers contract
    (a new one fails lint-imports)."""
    import tomllib

    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    contract = pyproject["tool"]["importlinter"]["contracts"][0]
    assert contract.get("exhaustive") is True and contract.get("containers") == ["agkd_bml"]
    declared = {m.strip() for layer in contract["layers"] for m in layer.split("#")[0].split("|")}
    package = Path(agkd_bml.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules == declared
