"""The training loop: every method trains for real, checkpoints load, resume continues exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import small_config

from agkd_bml.data import load_dataset
from agkd_bml.errors import UserError
from agkd_bml.methods import METHODS
from agkd_bml.models import build_model
from agkd_bml.train import load_checkpoint, load_model, train

QUIET = {"progress": False, "log": lambda _m: None}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_one_epoch_and_saves_a_loadable_checkpoint(tmp_path, teacher_run, method):
    cfg = small_config(tmp_path, method=method,
                       teacher=teacher_run if METHODS[method].needs_teacher else None)
    path = train(cfg, **QUIET)
    model, ckpt = load_model(path)
    assert ckpt.epoch == 1 and ckpt.config.method == method
    torch.manual_seed(cfg.runtime.seed)  # the same initial weights as the run
    fresh = build_model(cfg.model.arch, ckpt.data)
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert any(k.endswith("weight") for k in changed)  # training moved the weights
    line = json.loads((tmp_path / method / "metrics.jsonl").read_text().splitlines()[0])
    assert all(torch.isfinite(torch.tensor(v)) for v in line["loss"].values())
    assert {"val_clean", "val_pgd", "lr", "seconds"} <= line.keys()
    expected_terms = {"agkd-bml": {"ce", "agkd", "bml"}, "bml": {"ce", "bml"}, "agkd": {"ce", "agkd"},
                      "trades": {"ce", "kl"}, "mart": {"ce", "mart"}, "sml": {"ce", "metric"}}
    assert set(line["loss"]) == expected_terms.get(method, {"ce"})


def test_agkd_bml_mart_and_init_from_teacher(tmp_path, teacher_run):
    cfg = small_config(tmp_path, method="agkd-bml", teacher=teacher_run, mart=True, init_from_teacher=True,
                       epochs=1)
    train(cfg, **QUIET)
    line = json.loads((tmp_path / "agkd-bml" / "metrics.jsonl").read_text())
    assert set(line["loss"]) == {"ce", "agkd", "bml", "mart"} and line["mart"] is True
    assert load_checkpoint(tmp_path / "agkd-bml").config.model.init_from_teacher is True


def test_resume_continues_epoch_schedule_and_optimizer_exactly(tmp_path):
    kw = dict(method="pgd-at", steps=2, epochs=3, milestones=[2], train_limit=200)
    train(small_config(tmp_path, out=str(tmp_path / "straight"), **kw), **QUIET)
    train(small_config(tmp_path, out=str(tmp_path / "stopped"), **{**kw, "epochs": 2}), **QUIET)
    messages = []
    train(small_config(tmp_path, out=str(tmp_path / "stopped"), **kw), resume=True, progress=False,
          log=messages.append)
    assert any("resuming from" in m and "(epoch 2)" in m for m in messages)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "stopped")
    assert a.epoch == b.epoch == 3
    assert (b.scheduler["last_epoch"] == 3 and b.optimizer["param_groups"][0]["lr"]
            == pytest.approx(0.05 * 0.1))
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    for k, st in a.optimizer["state"].items():
        assert torch.equal(st["momentum_buffer"], b.optimizer["state"][k]["momentum_buffer"])
    lines = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]


def test_existing_run_is_not_overwritten_without_a_flag(tmp_path):
    cfg = small_config(tmp_path, method="standard")
    train(cfg, **QUIET)
    before = (tmp_path / "standard" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        train(cfg, **QUIET)
    assert (tmp_path / "standard" / "last.pt").read_bytes() == before
    train(cfg, overwrite=True, **QUIET)


def test_agkd_without_teacher_and_mismatched_teacher_are_user_errors(tmp_path, teacher_run, cifar_path):
    with pytest.raises(UserError, match="--teacher"):
        train(small_config(tmp_path, method="agkd-bml"), **QUIET)
    with pytest.raises(UserError, match="classes"):
        train(small_config(tmp_path, method="agkd", dataset=f"npz:{cifar_path}", teacher=teacher_run),
              **QUIET)


def test_quickstart_students_are_robust_where_the_standard_model_is_not(quickstart_runs):
    """Acceptance of the core issue: PGD-20 accuracy of AGKD-BML and PGD-AT >= standard + 20 points."""
    tmp_path, rows = quickstart_runs
    pgd20 = {name: results[1].accuracy for name, results in rows.items()}
    assert rows["teacher"][1].attack.name == "pgd-20"
    assert set(rows) == {"teacher", "agkd-bml-2", "pgd-at-7", "pgd-at-2"}  # each row names its training steps
    for student in ("agkd-bml-2", "pgd-at-7", "pgd-at-2"):
        assert pgd20[student] >= pgd20["teacher"] + 0.20
    assert rows["agkd-bml-2"][0].accuracy > 0.8  # clean accuracy kept
    assert "| aa |" in (tmp_path / "aa" / "eval.md").read_text()


def test_val_split_keeps_best_and_ema_weights_that_eval_can_pick(tmp_path, capsys):
    """best.pt holds the epoch of the best held-out PGD accuracy; EMA weights follow the warm-up formula."""
    from agkd_bml.cli import main
    from agkd_bml.train.ema import Ema

    cfg = small_config(tmp_path, method="pgd-at", steps=1, epochs=3, val_split=100, ema=0.9)
    train(cfg, **QUIET)
    lines = [json.loads(line) for line in (tmp_path / "pgd-at" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["val_source"] == "held-out training images" and m["val_n"] == 100 for m in lines)
    assert all("ema_val_pgd" in m for m in lines)
    best_epoch = max(lines, key=lambda m: (m["val_pgd"], m["val_clean"], -m["epoch"]))["epoch"]
    assert load_checkpoint(tmp_path / "pgd-at" / "best.pt").epoch == best_epoch == lines[-1]["best_epoch"]
    for weights in ("best", "ema"):
        assert main(["eval", str(tmp_path / "pgd-at"), "--weights", weights, "--attacks", "clean", "--n",
                     "16",
                     "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert f"pgd-at ({weights}, epoch" in out and "Weights: each run's" in out
    model = build_model("small-cnn", load_model(tmp_path / "pgd-at")[1].data)
    ema = Ema(model, 0.9)
    before = {k: v.clone() for k, v in ema.weights.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    k = next(k for k in before if k.endswith("weight"))
    assert torch.allclose(ema.weights[k], before[k] + (1 - 2 / 11))


def test_a_tie_in_held_out_pgd_goes_to_the_epoch_with_more_clean_accuracy():
    from agkd_bml.train.trainer import improves

    best = {"val_pgd": 0.22, "val_clean": 0.595}
    assert improves({"val_pgd": 0.22, "val_clean": 0.656}, best, "val_pgd")  # same PGD, more clean: better
    # a full tie keeps the earlier
    assert not improves({"val_pgd": 0.22, "val_clean": 0.595}, best, "val_pgd")
    assert not improves({"val_pgd": 0.219, "val_clean": 0.9}, best, "val_pgd")  # PGD decides first
    assert improves({"val_pgd": 0.0, "val_clean": 0.1}, {}, "val_pgd")  # the first epoch always is


def test_a_clean_run_keeps_its_best_held_out_clean_accuracy(tmp_path):
    """Without a training attack, best.pt follows held-out clean accuracy (PGD
    accuracy is noise near 0 there)."""
    cfg = small_config(tmp_path, method="standard", epochs=3, val_split=100, lr=0.2)
    train(cfg, **QUIET)
    lines = [json.loads(line) for line in (tmp_path / "standard" / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(lines, key=lambda m: (m["val_clean"], -m["epoch"]))["epoch"]
    assert load_checkpoint(tmp_path / "standard" / "best.pt").epoch == best_epoch
    assert load_checkpoint(tmp_path / "standard" / "last.pt").best["by"] == "val_clean"


def test_eval_of_missing_best_or_ema_weights_is_one_line(tmp_path, teacher_run):
    r = subprocess.run([sys.executable, "-m", "agkd_bml", "eval", teacher_run, "--weights", "best", "--n",
                        "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--val-split" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "agkd_bml", "eval", teacher_run, "--weights", "ema", "--n",
                        "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--ema" in r.stderr


def test_an_adversarial_run_without_steps_selects_by_held_out_pgd(tmp_path):
    """`--method pgd-at --val-split N` without `--steps`: the method's own 7 steps train on AEs, so best.pt
    follows held-out PGD accuracy (it followed clean accuracy while selection read the unresolved --steps)."""
    cfg = small_config(tmp_path, method="pgd-at", epochs=2, val_split=100)
    assert cfg.attack.steps is None
    train(cfg, **QUIET)
    assert load_checkpoint(tmp_path / "pgd-at" / "last.pt").best["by"] == "val_pgd"


def test_config_yaml_records_the_resolved_training_attack_with_one_step_rule(tmp_path):
    """config.yaml holds the attack the run trained with; `train` and `reproduce` share one step-size rule."""
    from agkd_bml.methods.base import default_step_size
    from agkd_bml.reproduction.multistep import RunSpec, train_row
    from agkd_bml.reproduction.recipes import Context

    train(small_config(tmp_path, method="pgd-at", steps=2), **QUIET)
    saved = yaml.safe_load((tmp_path / "pgd-at" / "config.yaml").read_text())
    eps = 0.1  # the digits' budget
    assert (saved["eps"], saved["steps"], saved["step_size"], saved["label_smoothing"]) == (eps, 2, eps, 0.0)
    # 2.5 eps/steps capped at eps
    assert default_step_size(2, eps) == eps and default_step_size(7, eps) == eps / 4
    line = json.loads((tmp_path / "pgd-at" / "metrics.jsonl").read_text().splitlines()[0])
    assert (line["step_size"], line["targeted"], line["attack_loss"]) == (eps, False, "ce")
    # reproduce's runs resolve through the same rule, not a rule of their own
    ctx = Context(scale_name="tiny-medium", out=tmp_path / "rep", progress=False)
    run = train_row(ctx, RunSpec(label="AT-2", method="pgd-at", steps=2), 0)
    assert yaml.safe_load((run / "config.yaml").read_text())["step_size"] == saved["step_size"]


def test_resume_continues_the_saved_attack_when_a_default_changes(tmp_path, monkeypatch):
    """A changed default never changes what --resume continues; runs saved before the attack was recorded
    (step_size null) continue with eps/4, the default they trained with."""
    import agkd_bml.methods.base as base

    train(small_config(tmp_path, method="pgd-at", steps=2), **QUIET)
    monkeypatch.setattr(base, "default_step_size", lambda steps, eps: eps / 8)
    train(small_config(tmp_path, method="pgd-at", steps=2, epochs=2), resume=True, **QUIET)
    lines = [json.loads(x) for x in (tmp_path / "pgd-at" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step_size"] for m in lines] == [0.1, 0.1]
    # a run from before: its config.yaml and checkpoint say step_size null
    run = tmp_path / "pgd-at"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["config"].update(step_size=None, eps=None, label_smoothing=None)
    torch.save(ckpt, run / "last.pt")
    (run / "prev.pt").unlink(missing_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(ckpt["config"]))
    monkeypatch.undo()
    train(small_config(tmp_path, method="pgd-at", steps=2, epochs=3), resume=True, **QUIET)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == 3 and last["step_size"] == 0.1 / 4


def test_a_run_kept_without_training_checkpoints_points_to_its_best_weights(tmp_path):
    """A committed reproduction keeps best.pt only: asking for its last weights says which to ask for."""
    train(small_config(tmp_path, method="pgd-at", steps=1, val_split=100), **QUIET)
    run = tmp_path / "pgd-at"
    for name in ("last.pt", "prev.pt"):
        (run / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match="--weights best"):
        load_model(run)
    assert load_model(run, weights="best")[1].epoch == 1


def test_a_teacher_kept_without_its_last_epoch_says_how_to_go_on(tmp_path):
    """A finished teacher of a committed reproduction keeps best.pt only; its student cannot distil the last
    epoch then, and the error names the three ways on instead of suggesting an option `train` lacks."""
    train(small_config(tmp_path, method="standard", val_split=100), **QUIET)
    teacher = tmp_path / "standard"
    for name in ("last.pt", "prev.pt"):
        (teacher / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"keeps only its best weights.*git add -f.*move .* away.*--teacher"):
        train(small_config(tmp_path, method="agkd", teacher=str(teacher)), **QUIET)
    train(small_config(tmp_path, method="agkd", teacher=str(teacher / "best.pt")), **QUIET)
    assert load_checkpoint(tmp_path / "agkd").epoch == 1


def test_cyclic_schedule_rises_to_the_peak_at_two_fifths_and_ends_at_zero(tmp_path):
    # 256 images in batches of 64: 4 steps an epoch, 5 epochs; the peak is after epoch 2 (5 * 2 // 5)
    cfg = small_config(tmp_path, method="standard", epochs=5, lr=0.2, lr_schedule="cyclic", val_n=0)
    train(cfg, **QUIET)
    lines = (tmp_path / "standard" / "metrics.jsonl").read_text().splitlines()
    lrs = [json.loads(line)["lr"] for line in lines]
    # the lr of an epoch's last step: 4/8, 8/8 of the way up, then 4/12, 8/12, 12/12 of the way down
    assert lrs == pytest.approx([0.1, 0.2, 0.2 * 8 / 12, 0.2 * 4 / 12, 0.0])
    assert load_checkpoint(tmp_path / "standard").scheduler["last_epoch"] == 20  # stepped per batch


def test_cyclic_schedule_rejects_milestones(tmp_path):
    with pytest.raises(UserError, match="milestones"):
        train(small_config(tmp_path, lr_schedule="cyclic", milestones=[2]), **QUIET)


def test_fast_at_attacks_with_batchnorm_in_train_mode(tmp_path):
    """Wong et al.'s FGSM-RS: one step of 1.25 eps, and the attack's forward pass sees batch statistics
    (so BatchNorm's running statistics move during the attack, which an eval-mode attack never does)."""
    from agkd_bml.methods.base import MethodContext, resolve_attack

    cfg = small_config(tmp_path, method="fast-at")
    data = load_dataset("digits")
    attack = resolve_attack(cfg, data.spec)
    assert (attack.steps, attack.step_size) == (1, pytest.approx(1.25 * attack.eps))
    x, y = data.x_train[:32].float() / 255, data.y_train[:32].long()
    for name, moves in (("fast-at", True), ("pgd-at", False)):
        torch.manual_seed(0)
        model = build_model("small-cnn", data.spec).train()
        method = METHODS[name](cfg, MethodContext(num_classes=data.spec.num_classes, attack=attack))
        before = [b.clone() for b in model.buffers() if b.dtype.is_floating_point]
        method.attack(model, x, y, torch.Generator().manual_seed(0))
        after = [b for b in model.buffers() if b.dtype.is_floating_point]
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)) is moves, name
        assert model.training  # the mode is given back either way


def test_resume_without_a_checkpoint_is_an_error_unless_asked_to_start(tmp_path):
    """`--resume` on a folder with no checkpoint trained from scratch with exit code 0."""
    cfg = small_config(tmp_path, method="standard")
    with pytest.raises(UserError, match="nothing to resume .* --start-if-none"):
        train(cfg, resume=True, **QUIET)
    assert not (tmp_path / "standard" / "last.pt").exists()
    train(cfg, resume=True, start_if_none=True, **QUIET)
    assert load_checkpoint(tmp_path / "standard").epoch == 1


def test_the_header_says_how_many_images_an_epoch_trains_on(tmp_path):
    """`--train-limit 200` said "200 images" and trained on 128 a epoch (full batches only)."""
    messages = []
    train(small_config(tmp_path, method="standard", train_limit=200, batch_size=128), progress=False,
          log=messages.append)
    assert any("200 images (128 an epoch in full batches of 128" in m for m in messages)


def test_a_run_config_means_the_same_from_any_folder(tmp_path, monkeypatch):
    """`config.yaml` kept `out: runA` relative to where the run started: `train --config w4/runA/config.yaml
    --resume` from another folder said "nothing to resume in runA" and trained a new ./runA."""
    from agkd_bml.cli import main

    start, elsewhere = tmp_path / "w4", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    args = ["--method", "standard", "--train-limit", "128", "--batch-size", "64", "--val-n", "16",
            "--no-progress"]
    assert main(["train", *args, "--epochs", "1", "--out", "runA"]) == 0
    saved = yaml.safe_load((start / "runA" / "config.yaml").read_text())
    assert saved["out"] == str(start / "runA")
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", str(start / "runA" / "config.yaml"), "--epochs", "2", "--resume",
                 "--no-progress"]) == 0
    assert load_checkpoint(start / "runA").epoch == 2 and not (elsewhere / "runA").exists()


def test_cyclic_peak_moves_the_top_of_the_triangle_to_any_step(tmp_path):
    """``--cyclic-peak 2.5`` of 5 epochs is train_fgsm.py's schedule (the peak at half the steps, here
    step 10 of 20); without it the peak stays at epochs * 2 // 5, as every earlier run trained."""
    cfg = small_config(tmp_path, method="standard", epochs=5, lr=0.2, lr_schedule="cyclic", cyclic_peak=2.5,
                       val_n=0)
    train(cfg, **QUIET)
    lines = (tmp_path / "standard" / "metrics.jsonl").read_text().splitlines()
    lrs = [json.loads(line)["lr"] for line in lines]
    assert lrs == pytest.approx([0.08, 0.16, 0.16, 0.08, 0.0])
    bad_ones = (dict(cyclic_peak=5.0), dict(cyclic_peak=0.0), dict(cyclic_peak=2.0, lr_schedule="multistep"))
    for bad in bad_ones:
        with pytest.raises(UserError, match="--cyclic-peak"):
            train(small_config(tmp_path, **{"lr_schedule": "cyclic", **bad}), **QUIET)
