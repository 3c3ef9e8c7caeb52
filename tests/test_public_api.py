"""The package as a user's own code meets it: any model, adversarial images back, drop-ins for the reference
AutoAttack and RobustBench, and an import that changes nothing in the host process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from torch import nn

import agkd_bml
from agkd_bml.attacks import parse_attacks
from agkd_bml.models.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


class Returns(nn.Module):
    """A user's model around one of ours that returns its logits as a tensor, tuple, dict or object."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor) -> object:
        logits = self.net(x).logits
        if self.kind == "tensor":
            return logits
        if self.kind == "tuple":
            return logits, x.mean()
        if self.kind == "dict":
            return {"logits": logits, "aux": x.mean()}
        return type("Output", (), {"logits": logits})()


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict", "object"])
def test_attacks_take_any_model_and_return_images(teacher_run, digits, kind):
    """Every attack of the registry is called directly on a plain module (it failed with "'Tensor' object has
    no attribute 'logits'"), and returns images inside the ball that the model gets wrong where it says so."""
    ours = load_model(teacher_run)[0].eval()
    model = Returns(ours, kind)
    x, y = digits.x_test[:16].float() / 255, digits.y_test[:16]
    for atk in parse_attacks("fgsm,pgd-5,aa", eps=0.1, num_classes=10):
        out = atk(model, x, y)
        assert out.images.shape == x.shape and (out.images - x).abs().max() <= 0.1 + 1e-6
        with torch.no_grad():
            assert torch.equal(out.fooled, ours(out.images).logits.argmax(1) != y)
        assert out.fooled.any()  # a clean-trained model falls to these attacks


def test_attack_returns_images_per_image_results_and_which_part_broke_each(teacher_run, digits):
    ours = load_model(teacher_run)[0].eval()
    model = Returns(ours, "tensor")
    x, y = digits.x_test[:40], digits.y_test[:40]
    out = agkd_bml.attack(model, x, y, "pgd-5", eps=0.1, batch_size=16)
    got = agkd_bml.evaluate(model, x, y, attacks="pgd-5", eps=0.1, batch_size=16)
    assert torch.equal(out.robust, got.robust["pgd-5"])  # the same per-image result as the evaluator
    assert out.images.dtype == torch.float32 and out.images.shape == x.shape and out.broken_by is None
    assert "5 step(s)" in out.attack
    aa = agkd_bml.attack(model, x, y, "aa", eps=0.1, batch_size=16)
    assert len(aa.broken_by) == 40
    for clean, fooled, part in zip(aa.clean_correct.tolist(), aa.fooled.tolist(), aa.broken_by, strict=True):
        assert (part is not None) == (clean and fooled)  # a part is named exactly where one broke the image
        assert part in (None, "apgd-ce", "apgd-t", "fab-t", "square")
    with pytest.raises(ValueError, match="one attack"):
        agkd_bml.attack(model, x, y, "pgd-5,fgsm")


def test_import_changes_nothing_in_the_process_and_the_package_says_what_it_exports():
    code = ("import os, agkd_bml, agkd_bml.api, agkd_bml.compat; "
            "print('THP_MEM_ALLOC_ENABLE' in os.environ, all(getattr(agkd_bml, n) is not None for n in "
            "agkd_bml.__all__) and set(agkd_bml.__all__) <= set(dir(agkd_bml)))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c",
                          code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "True"]
    assert issubclass(agkd_bml.UserError, ValueError)
    assert (Path(agkd_bml.__file__).parent / "py.typed").is_file()
    assert {"attack", "evaluate", "AutoAttack", "benchmark", "UserError"} <= set(agkd_bml.__all__)


def test_core_install_has_ranges_and_no_package_that_pins_others_down():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "==" in d or "~=" in d]
    assert not [d for d in project["dependencies"] if d.startswith("torchattacks")]  # it pins requests~=2.25
    assert "torchattacks" in project["optional-dependencies"]


def test_our_autoattack_needs_no_torchattacks_and_spsa_says_how_to_get_it(digits):
    code = ("import sys; sys.modules['torchattacks'] = None\n"  # as if it were not installed
            "import torch, agkd_bml\nfrom agkd_bml.attacks import parse_attacks\nnet = "
            "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))\nx, y = torch.rand(4, "
            "3, 8, 8), torch.arange(4)\nprint(agkd_bml.attack(net, x, y, 'aa', eps=8 / "
            "255).images.shape)\ntry:\n    parse_attacks('spsa-1', eps=0.1)[0](net, x, y)\nexcept "
            "agkd_bml.UserError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch.Size([4, 3, 8, 8])" in out and "pip install 'agkd-bml[torchattacks]'" in out


#: an evaluation script written for the reference AutoAttack; only its first line changes to switch
REFERENCE_SCRIPT = """\
from autoattack import AutoAttack
adversary = AutoAttack(model, norm="Linf", eps=0.1, version="standard", seed=0, device="cpu",
                       log_path=log_path)
x_adv, y_adv = adversary.run_standard_evaluation(x_test, y_test, bs=8, return_labels=True)
"""


def test_a_script_written_for_the_reference_autoattack_runs_with_one_import_changed(
        quickstart_runs, digits, reference_autoattack, tmp_path, monkeypatch):
    """Same per-image results as the reference on a trained (PGD-AT-7, digits) model, from the same script."""
    monkeypatch.syspath_prepend(str(reference_autoattack))
    model = load_model(quickstart_runs[0] / "pgd-at-7")[0].eval()
    plain = Returns(model, "tensor").eval()
    x_test, y_test = digits.x_test[:8].float() / 255, digits.y_test[:8]
    results = {}
    for source in ("reference", "ours"):
        script = REFERENCE_SCRIPT if source == "reference" else REFERENCE_SCRIPT.replace(
            "from autoattack import AutoAttack", "from agkd_bml import AutoAttack")
        scope = {"model": plain, "x_test": x_test, "y_test": y_test,
                 "log_path": str(tmp_path / f"{source}.log")}
        exec(compile(script, source, "exec"), scope)
        x_adv, y_adv = scope["x_adv"], scope["y_adv"]
        assert (x_adv - x_test).abs().max() <= 0.1 + 1e-6
        with torch.no_grad():
            assert torch.equal(y_adv, model(x_adv).logits.argmax(1))
        results[source] = y_adv == y_test
    assert torch.equal(results["ours"], results["reference"])
    assert 0 < int(results["ours"].sum()) < 8  # a robust model: some images hold, some fall
    log = (tmp_path / "ours.log").read_text()
    assert "initial accuracy:" in log and "robust accuracy after APGD-CE" in log and "robust accuracy:" in log
    # each part's line shows the time so far, as the reference's does (it once
    # showed the end time on every line)
    times = [float(t) for t in re.findall(r"\(total time ([0-9.]+) s\)", log)]
    assert len(times) == 4 and times == sorted(times) and times[0] < times[-1]


def test_robustbench_benchmark_drop_in_returns_clean_and_robust_accuracy(teacher_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Returns(load_model(teacher_run)[0].eval(), "tensor")
    clean, robust = agkd_bml.benchmark(model, n_examples=24, dataset="digits", threat_model="Linf",
                                       to_disk=True, model_name="teacher", batch_size=12)
    assert 0.5 < clean <= 1 and robust < clean  # an undefended model under AutoAttack
    assert (tmp_path / "model_info" / "digits" / "Linf" / "teacher.json").is_file()
    with pytest.raises(ValueError, match="threat_model"):
        agkd_bml.benchmark(model, threat_model="Linf-corruptions", dataset="digits")


def test_results_say_what_produced_them_and_store_counts(teacher_run, digits, tmp_path):
    """metrics.jsonl and eval.json had no versions, device, commit or data fingerprint, and accuracies carried
    float32 noise (0.10222221910953522 for 46/450)."""
    import agkd_bml.provenance as prov

    line = json.loads((Path(teacher_run) / "metrics.jsonl").read_text().splitlines()[-1])
    model = load_model(teacher_run)[0].eval()
    x, y = digits.x_test[:45], digits.y_test[:45]
    agkd_bml.evaluate(model, x, y, attacks="clean,fgsm", eps=0.1, out=tmp_path)
    summary = json.loads((tmp_path / "eval.json").read_text())
    for made in (line["provenance"], summary["provenance"]):
        assert made["agkd_bml"] == agkd_bml.__version__ and made["torch"] == str(torch.__version__)
        assert made["device"].startswith("cpu") and made["commit"] == prov.source_commit()
    assert line["provenance"]["data_sha256"] == prov.tensor_digest(*load_dataset_train("digits"))
    assert summary["provenance"]["data_sha256"] == prov.tensor_digest(x, y.long())
    fgsm = next(r for r in summary["results"] if r["attack"] == "fgsm")
    assert fgsm["n"] == 45 and fgsm["accuracy"] == round(fgsm["correct"] / 45, 3)


def load_dataset_train(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from agkd_bml.data import load_dataset

    data = load_dataset(name)
    return data.x_train, data.y_train


def test_readme_attack_example_runs(capsys):
    import re

    block = re.search(r"<!-- attack-example -->\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README lost its attack-example block"
    exec(compile(block.group(1), "README attack-example", "exec"), {})
    assert "torch.Size([8, 3, 32, 32])" in capsys.readouterr().out


def test_autoattack_shows_each_part_on_stderr_and_its_tally_in_eval_json(teacher_run, tmp_path, capsys):
    """AutoAttack was silent within a batch, and the per-part tally was never
    shown; status lines went to stdout."""
    from agkd_bml.cli import main

    assert main(["eval", teacher_run, "--attacks", "clean,aa", "--n", "24", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "aa: apgd-ce broke" in captured.err and "still robust" in captured.err
    assert "wrote " in captured.err and "wrote " not in captured.out and "| model |" in captured.out
    aa = next(r for r in json.loads((tmp_path / "eval.json").read_text())["results"] if r["attack"] == "aa")
    clean = next(r for r in json.loads((tmp_path / "eval.json").read_text())["results"] if r["attack"]
                 == "clean")
    assert sum(aa["fooled_by"].values()) == clean["correct"] - aa["correct"]
