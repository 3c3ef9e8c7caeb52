"""Models this project never saw: py: factories, exported programs and
TorchScript, checked and evaluated alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agkd_bml.cli import main

FACTORY = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """A torchvision-style CNN that expects normalised inputs (mean 0.5, std 0.25)."""

    def __init__(self, classes=10, dropout=False, softmax=False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, classes)
        self.dropout, self.softmax = dropout, softmax

    def forward(self, x):
        h = self.features(x)
        if self.dropout:  # a randomized defence: dropout left on in eval mode
            h = F.dropout(h, 0.5, training=True)
        out = self.head(h)
        return out.softmax(1) if self.softmax else out


def make():
    return Net()


def three_classes():
    return Net(classes=3)


def randomized():
    return Net(dropout=True)


def probabilities():
    return Net(softmax=True)


def broken():
    raise RuntimeError("no weights here")


class Tupled(Net):
    """Returns (feature map, logits), as much research code does (the paper authors' returns three
    outputs)."""

    def forward(self, x):
        return self.features[:3](x), super().forward(x)


def tupled():
    return Tupled()


class LogitsOf(nn.Module):
    """What a factory writes for such a model: a wrapper whose forward picks the logits."""

    def __init__(self):
        super().__init__()
        self.net = Tupled()

    def forward(self, x):
        return self.net(x)[1]


def wrapped():
    return LogitsOf()


class SelfTraining(Net):
    """Switches itself to training mode in its forward, as the paper authors' WideResNet does unless told not
    to."""

    def forward(self, x):
        self.train()
        return super().forward(x)


def self_training():
    return SelfTraining()
'''
NORM = "0.5,0.25"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, digits):
    """A factory file, its weights trained with plain PyTorch, and the same model exported and scripted."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "m.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        import m
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    net = m.make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = (digits.x_train.float() / 255 - 0.5) / 0.25, digits.y_train
    for _ in range(10):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    torch.save(net.state_dict(), root / "m.pt")
    example = x[:2]
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      root / "m.pt2")
    # torch.export's default: batch fixed
    torch.export.save(torch.export.export(net, (x[:3],)), root / "m_static.pt2")
    torch.jit.save(torch.jit.trace(net, example), root / "m_ts.pt")
    return root


def _table_rows(out_dir: Path) -> list[str]:
    return [line.split("|", 2)[2] for line in (out_dir / "eval.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| model")]


def test_factory_export_and_torchscript_give_the_same_table(foreign, tmp_path, capsys):
    common = ["--dataset", "digits", "--normalize", NORM, "--attacks", "clean,pgd-5,aa", "--n", "64",
              "--no-progress"]
    sources = {"py": [f"py:{foreign / 'm.py'}:make", "--model-weights", str(foreign / "m.pt")],
               "pt2": [str(foreign / "m.pt2")], "ts": [str(foreign / "m_ts.pt")]}
    rows = {}
    for name, source in sources.items():
        assert main(["eval", *source, *common, "--out", str(tmp_path / name)]) == 0
        rows[name] = _table_rows(tmp_path / name)
    out = capsys.readouterr().out
    assert "Weights: each run's" not in out  # foreign models have no last / best / EMA of ours
    assert rows["py"] == rows["pt2"] == rows["ts"] and len(rows["py"]) == 1
    clean, pgd = (float(c.split()[0]) for c in rows["py"][0].split("|")[:2])
    assert clean > 50 and pgd < clean  # trained for real, and the attack bites
    summary = json.loads((tmp_path / "py" / "eval.json").read_text())
    rb = summary["models"]["make"]["robustbench"]
    assert rb["dataset"] == "digits" and rb["eps"] == "0.1" and rb["autoattack_acc"] is not None


def test_the_table_says_which_weights_and_inputs_a_foreign_model_had(foreign, tmp_path, capsys):
    """A figure must say which weights it scored: a factory's row names its weights file (with a checksum) and
    its normalisation; without --model-weights the row says so, and a note warns before any attack runs."""
    import hashlib

    factory = f"py:{foreign / 'm.py'}:make"
    common = ["--dataset", "digits", "--attacks", "clean", "--n", "16", "--no-progress"]
    assert main(["eval", factory, "--model-weights", str(foreign / "m.pt"), "--normalize", NORM, *common,
                 "--out", str(tmp_path / "given")]) == 0
    digest = hashlib.sha256((foreign / "m.pt").read_bytes()).hexdigest()[:12]
    said = (f"Model make: {factory}, weights {foreign / 'm.pt'} (sha256 {digest}), inputs normalised in "
            "front with mean (0.5) and std (0.25).")
    assert said in (tmp_path / "given" / "eval.md").read_text()
    summary = json.loads((tmp_path / "given" / "eval.json").read_text())
    assert summary["models"]["make"]["source"] == said[len("Model make: "):-1]
    assert {r["source"] for r in summary["results"]} == {said[len("Model make: "):-1]}
    err = capsys.readouterr().err
    assert "note:" not in err and "warning:" not in err  # an eval-mode model with its weights: nothing to say
    assert main(["eval", factory, *common, "--out", str(tmp_path / "bare")]) == 0
    assert "note: make: no --model-weights" in capsys.readouterr().err
    assert (f"Model make: {factory}, the weights its factory gives it (no --model-weights), inputs in [0, 1] "
            "as they are (no --normalize).") in (tmp_path / "bare" / "eval.md").read_text()
    assert main(["eval", str(foreign / "m_ts.pt"), *common, "--out", str(tmp_path / "ts")]) == 0
    assert (f"Model m_ts: {foreign / 'm_ts.pt'}, the weights saved in it,"
            in (tmp_path / "ts" / "eval.md").read_text())


def test_weights_saved_from_dataparallel_load_and_a_misfit_names_its_keys(foreign, tmp_path, capsys):
    """Most robustness code saves ``model.state_dict()`` of an ``nn.DataParallel``: every key starts with
    ``module.``, often inside ``{"net": ...}`` (the paper authors' code too). Such weights give the same table
    as the plain ones, also into a factory's wrapper that picks the logits out of a tuple (its keys start with
    ``net.``); a tuple that does not start with the logits, and weights that do not fit, say what to do."""
    plain = torch.load(foreign / "m.pt", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.items()}}, tmp_path / "dp.pt")
    torch.save({"net": {f"module.{k}": v for k, v in plain.items()}, "acc": 90.0, "epoch": 10},
               tmp_path / "ckpt.t7")
    torch.save({k: v for k, v in plain.items() if k != "head.bias"} | {"extra.weight": torch.zeros(1)},
               tmp_path / "misfit.pt")
    m = foreign / "m.py"
    common = ["--dataset", "digits", "--normalize", NORM, "--attacks", "clean,pgd-5", "--n", "32",
              "--no-progress"]
    for name, factory, weights in (("plain", "make", foreign / "m.pt"), ("dp", "make", tmp_path / "dp.pt"),
                                   ("wrapped", "wrapped", tmp_path / "ckpt.t7")):
        assert main(["eval", f"py:{m}:{factory}", *common, "--model-weights", str(weights),
                     "--out", str(tmp_path / name)]) == 0
    assert _table_rows(tmp_path / "dp") == _table_rows(tmp_path / "plain") == _table_rows(
        tmp_path / "wrapped")
    capsys.readouterr()
    assert main(["eval", f"py:{m}:make", *common, "--model-weights", str(tmp_path / "misfit.pt")]) == 2
    assert ("does not fit the model: 1 key(s) missing: head.bias; 1 unexpected: extra.weight"
            in capsys.readouterr().err)
    assert main(["eval", f"py:{m}:tupled", *common, "--model-weights", str(foreign / "m.pt")]) == 2
    assert ("the model returned a tuple of (2, 16, 16, 16), (2, 10); its first element must be the logits"
            in capsys.readouterr().err)


def test_a_factory_imports_the_code_beside_it(tmp_path, monkeypatch, capsys):
    """A factory file imports the model code next to it (its folder goes on sys.path, as for a script), and
    py:module:FACTORY finds a module in the working directory (as python -m does), not only installed ones."""
    (tmp_path / "sibling_netdef.py").write_text(
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(256, "
        "10))\n")
    (tmp_path / "sibling_factory.py").write_text("from sibling_netdef import build\n\n\ndef make():\n    "
                                                 "return build()\n")
    original = list(sys.path)
    for spec, cwd in ((f"py:{tmp_path / 'sibling_factory.py'}:make", Path.cwd()),
                      ("py:sibling_factory:make", tmp_path)):
        monkeypatch.setattr(sys, "path", list(original))  # each call starts from the path the test had
        for name in ("sibling_netdef", "sibling_factory"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.chdir(cwd)
        code = main(["eval", spec, "--dataset", "digits", "--attacks", "clean", "--n", "8", "--no-progress"])
        assert code == 0, (spec, capsys.readouterr().err)


def test_a_program_exported_with_a_fixed_batch_runs_on_any_batch(foreign, tmp_path, capsys):
    """torch.export fixes the batch size unless told otherwise: such a
    program runs 3 images at a time (the last
    chunk padded), with the same table as the factory, and a note says how to export it for whole batches."""
    common = ["--dataset", "digits", "--normalize", NORM, "--attacks", "clean,pgd-5", "--n", "64",
              "--no-progress"]
    assert main(["eval", str(foreign / "m_static.pt2"), *common, "--out", str(tmp_path / "static")]) == 0
    assert "exported for batches of exactly 3 image(s)" in capsys.readouterr().err
    assert main(["eval", f"py:{foreign / 'm.py'}:make", "--model-weights", str(foreign / "m.pt"), *common,
                 "--out", str(tmp_path / "py")]) == 0
    assert _table_rows(tmp_path / "static") == _table_rows(tmp_path / "py")


@pytest.mark.parametrize("factory, needle", [("randomized", "randomized"), ("probabilities", "probabilities"),
                                             ("self_training",
                                              "puts its layers in training mode (BatchNorm2d)")])
def test_randomized_and_softmax_models_are_flagged_before_autoattack(
        foreign, tmp_path, factory, needle, capsys):
    assert main(["eval", f"py:{foreign / 'm.py'}:{factory}", "--dataset", "digits", "--attacks", "clean,aa",
                 "--n", "16", "--no-progress", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {factory}:" in err and needle in err
    flags = json.loads((tmp_path / "eval.json").read_text())["models"][factory]["flags"]
    assert any(needle in f for f in flags)
    if factory == "randomized":  # the remedy the warning names runs: AutoAttack's rand version (EoT 20)
        assert main(["eval", f"py:{foreign / 'm.py'}:{factory}", "--dataset", "digits", "--attacks",
                     "aa-rand",
                     "--n", "16", "--no-progress"]) == 0
        assert "AutoAttack rand (for randomized models)" in capsys.readouterr().out


def test_bad_foreign_input_is_one_line_and_exit_code_2(foreign, tmp_path, capsys):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a model")
    m = foreign / "m.py"
    cases = [
        ([f"py:{m}:nope", "--dataset", "digits"], "has no function nope"),
        ([f"py:{tmp_path}/missing.py:make", "--dataset", "digits"], "no such file"),
        ([f"py:{m}:broken", "--dataset", "digits"], "broken() failed"),
        ([str(junk), "--dataset", "digits"], "is not an exported program"),
        ([f"py:{m}:three_classes", "--dataset", "digits"], "3 outputs per image but digits has 10 classes"),
        ([f"py:{m}:make", "--dataset", "npz:" + str(Path(__file__).parents[2] / "shared/data/cifar10.npz")],
         "cannot take"),
        ([f"py:{m}:make"], "--dataset"),
        ([f"py:{m}:three_classes", "--model-weights", str(foreign / "m.pt"), "--dataset", "digits"],
         "does not fit"),
        ([f"py:{m}:make", "--dataset", "digits", "--normalize", "1,2,3"], "--normalize"),
        ([str(foreign / "m.pt"), "--dataset", "digits"], "holds bare weights (a state dict), not an agkd-bml "
                                                        "checkpoint: give the model as py:FILE.py:FACTORY"),
    ]
    for args, needle in cases:  # in-process (the CLI's own error path), so the torch import is paid once
        code = main(["eval", *args, "--attacks", "clean", "--n", "8", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = [ln for ln in err.splitlines() if ln.strip() and "warn" not in ln.lower()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (args, err)
    r = subprocess.run([sys.executable, "-m", "agkd_bml", "eval", str(junk), "--dataset", "digits"],
                       capture_output=True, text=True, timeout=300)  # and once through a real process
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not an exported program" in r.stderr


def test_sigkill_during_autoattack_then_the_same_command_resumes_to_the_same_table(tmp_path, quickstart_runs):
    """Kill ``eval --attacks aa`` after its first saved AA progress (one batch of 16 images: a part, or a
    target or a Square report inside one); the rerun continues and equals a clean run."""
    run = quickstart_runs[0] / "pgd-at-7"  # a digits PGD-AT model: AA has robust points to work on
    args = [sys.executable, "-m", "agkd_bml", "eval", str(run), "--attacks", "aa", "--n", "16",
            "--batch-size", "16",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state, deadline = tmp_path / "killed" / "state", time.time() + 240

    def unfinished_aa() -> bool:
        for f in state.glob("*.pt"):
            try:
                raw = torch.load(f, weights_only=True)
            except Exception:
                continue
            if '"name": "aa"' in raw["key"] and not raw["done"] and (raw["batches"] or raw.get("partial")):
                return True
        return False

    while not unfinished_aa():
        assert proc.poll() is None and time.time() < deadline, \
            "the evaluation ended before it could be killed"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "eval.md").exists()
    resumed = subprocess.run([*args, "--out", str(tmp_path / "killed")], env=env, capture_output=True,
                             text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([*args, "--out", str(tmp_path / "straight")], env=env, capture_output=True,
                              text=True,
                              timeout=600)
    assert straight.returncode == 0
    assert _table_rows(tmp_path / "killed") == _table_rows(tmp_path / "straight")
    aa = float(_table_rows(tmp_path / "straight")[0].split("|")[0].split()[0])
    assert 0 < aa < 100  # a point where a wrong resume would show


def test_audit_and_curves_take_foreign_models_and_the_audit_warns(foreign, tmp_path, capsys):
    m = foreign / "m.py"
    code = main(["audit", f"py:{m}:probabilities", "--dataset", "digits", "--n", "16", "--square-queries",
                 "20",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code in (0, 1) and "WARN  the outputs look like probabilities" in out
    assert (f"audit of probabilities (py:{m}:probabilities, the weights its factory gives it (no "
            "--model-weights)" in out)
    assert main(["curves", str(foreign / "m.pt2"), "--dataset", "digits", "--normalize", NORM, "--n", "16",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    # needs embeddings: one line, exit 2
    assert main(["knn", str(foreign / "m.pt2"), "--dataset", "digits"]) == 2


def test_two_checkpoints_of_one_architecture_share_a_table_under_their_own_names(foreign, tmp_path, capsys):
    """One --model-weights applied to every py: model (two checkpoints of one architecture could not share a
    table), and rows were named after the factory function."""
    factory = f"py:{foreign / 'm.py'}:make"
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save({k: torch.randn_like(v) if v.is_floating_point() else v
                for k, v in torch.load(foreign / "m.pt", weights_only=True).items()}, other)
    assert main(["eval", factory, factory, "--model-weights", str(foreign / "m.pt"), "--model-weights",
                 str(other),
                 "--name", "trained", "--name", "scrambled", "--normalize", NORM, "--dataset", "digits",
                 "--attacks", "clean", "--n", "64", "--no-progress", "--out", str(tmp_path / "two")]) == 0
    models = json.loads((tmp_path / "two" / "eval.json").read_text())["models"]
    assert set(models) == {"trained", "scrambled"}
    assert (str(other) in models["scrambled"]["source"] and str(foreign / "m.pt")
            in models["trained"]["source"])
    results = json.loads((tmp_path / "two" / "eval.json").read_text())["results"]
    clean = {r["model"]: r["accuracy"] for r in results}
    assert clean["trained"] > clean["scrambled"] + 0.3  # each row scored its own weights
    capsys.readouterr()
    assert main(["eval", factory, "--name", "a", "--name", "b", "--dataset", "digits", "--attacks",
                 "clean"]) == 2
    assert "--name is given 2 time(s) for 1 model(s)" in capsys.readouterr().err


def test_an_out_folder_with_other_attacks_is_refused_not_silently_rewritten(teacher_run, tmp_path, capsys):
    """A second eval into the same --out with other attacks silently dropped the first attacks' columns."""
    out = str(tmp_path / "e")
    common = ["--n", "16", "--no-progress", "--out", out]
    assert main(["eval", teacher_run, "--attacks", "clean,fgsm", *common]) == 0
    capsys.readouterr()
    assert main(["eval", teacher_run, "--attacks", "clean,pgd-5", *common]) == 2
    assert "--attacks clean,pgd-5,fgsm" in capsys.readouterr().err
    assert main(["eval", teacher_run, "--attacks", "clean,pgd-5,fgsm", *common]) == 0
    attacks = {r["attack"] for r in json.loads((tmp_path / "e" / "eval.json").read_text())["results"]}
    assert {"clean", "fgsm", "pgd-5"} <= attacks
