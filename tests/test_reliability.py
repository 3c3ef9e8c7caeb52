"""Crash safety, unsafe checkpoints, divergence and fuzzed input: nothing lost, nothing executed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agkd_bml.cli import main
from agkd_bml.data import load_dataset
from agkd_bml.errors import UserError
from agkd_bml.methods import METHODS
from agkd_bml.methods.pgd_at import PgdAt
from agkd_bml.train import TrainingDiverged, load_checkpoint, train

TRAIN = ["train", "--method", "pgd-at", "--steps", "2", "--dataset", "digits", "--arch", "small-cnn",
         "--batch-size", "64", "--lr", "0.05", "--val-n", "32", "--val-steps", "1", "--deterministic",
         "--threads", "1", "--val-split", "100", "--ema", "0.9", "--no-progress"]


def _train_cmd(out: Path, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agkd_bml", *TRAIN, "--epochs", str(epochs), "--out", str(out), *extra]


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_when(out: Path, epochs: int, ready, timeout: float = 240) -> None:
    """Start training and SIGKILL it as soon as ``ready(out)`` is true."""
    proc = subprocess.Popen(_train_cmd(out, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready(out):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("training ended before the kill point was reached")
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def _mid_write(out: Path) -> bool:
    return any(p.name.endswith(".tmp") for p in out.glob(".last.pt.*")) if out.is_dir() else False


KILL_POINTS = {
    "between-epochs": lambda out: _lines(out / "metrics.jsonl") >= 1,
    "mid-epoch": lambda out: _lines(out / "metrics.jsonl") >= 1 and (time.sleep(0.4) or True),
    "mid-checkpoint-write": _mid_write,
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_train_cmd(out, 3), check=True, capture_output=True, timeout=600)
    ckpt = load_checkpoint(out)
    ckpt.metrics["run_dir"] = str(out)
    return ckpt


def uninterrupted_dir(ckpt) -> Path:
    return Path(ckpt.metrics["run_dir"])


# a kill between epochs is the plain case of the other two (inside an epoch, inside a checkpoint write)
@pytest.mark.parametrize("point", [pytest.param(p, marks=pytest.mark.slow) if p == "between-epochs" else p
                                   for p in sorted(KILL_POINTS)])
def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted, point):
    out = tmp_path / "run"
    _kill_when(out, 3, KILL_POINTS[point])
    if point == "mid-checkpoint-write":
        assert _mid_write(out), "the kill did not land inside a checkpoint write"
    # the command a crashed run is restarted with: a kill inside the first
    # checkpoint write leaves none to resume
    r = subprocess.run(_train_cmd(out, 3, "--resume", "--start-if-none"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    final = load_checkpoint(out)
    assert final.epoch == 3
    for k, v in uninterrupted.model.items():
        assert torch.equal(v, final.model[k]), f"{point}: {k} differs"
    # the moving average and the held-out selection resume exactly too
    assert final.ema["updates"] == uninterrupted.ema["updates"] and final.best == uninterrupted.best
    for k, v in uninterrupted.ema["weights"].items():
        assert torch.equal(v, final.ema["weights"][k]), f"{point}: EMA {k} differs"
    best, straight_best = (load_checkpoint(out / "best.pt"),
                           load_checkpoint(uninterrupted_dir(uninterrupted) / "best.pt"))
    assert best.epoch == straight_best.epoch == final.best["epoch"]
    assert all(torch.equal(v, best.model[k]) for k, v in straight_best.model.items())
    assert not list(out.glob(".*.tmp"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == [1, 2, 3]


class _Payload:
    """Unpickling this creates a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_by_every_command(tmp_path, teacher_run):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "agkd-bml/1", "model": {}, "payload": _Payload(marker)}, evil)
    run_dir = tmp_path / "evil-run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(evil.read_bytes())
    commands = [
        ["eval", str(evil), "--n", "8"],
        ["eval", str(run_dir), "--n", "8"],
        ["train", "--method", "agkd-bml", "--teacher", str(evil), "--epochs", "1", "--out",
         str(tmp_path / "a")],
        ["train", "--method", "standard", "--teacher", str(evil), "--init-from-teacher", "--epochs", "1",
         "--out", str(tmp_path / "b")],
        ["train", "--method", "standard", "--epochs", "1", "--resume", "--out", str(run_dir)],
    ]
    for args in commands:
        r = subprocess.run([sys.executable, "-m", "agkd_bml", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert "refusing to load" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not marker.exists(), f"{args} executed the payload"
    assert (run_dir / "last.pt").read_bytes() == evil.read_bytes()  # the run directory was left alone


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    cfg = small_config(tmp_path, method="standard", epochs=2)
    train(cfg, progress=False, log=lambda _m: None)
    last = tmp_path / "standard" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["model"]["fc.bias"] += 1.0  # bit rot: weights no longer match their checksum
    torch.save(ckpt, last)
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(last)
    messages: list[str] = []
    train(small_config(tmp_path, method="standard", epochs=3), resume=True, progress=False,
          log=messages.append)
    assert any("skipping" in m for m in messages) and any("prev.pt (epoch 1)" in m for m in messages)
    assert load_checkpoint(tmp_path / "standard").epoch == 3


class _NanAt(PgdAt):
    """pgd-at whose extra term turns NaN at its 6th step (epoch 2, step 2 with 4 steps per epoch)."""

    name = "nan-test"
    calls = 0

    def loss(self, model, x, y, generator):
        terms = super().loss(model, x, y, generator)
        type(self).calls += 1
        terms["poison"] = terms["ce"] * (float("nan") if type(self).calls == 6 else 0.0)
        return terms


def test_nan_stops_the_run_with_its_step_and_term_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "nan-test", _NanAt)
    _NanAt.calls = 0
    cfg = small_config(tmp_path, method="nan-test", epochs=3, steps=1)
    with pytest.raises(TrainingDiverged, match=r"loss term 'poison' became non-finite at epoch 2, step 2"):
        train(cfg, progress=False, log=lambda _m: None)
    ckpt = load_checkpoint(tmp_path / "nan-test")
    assert ckpt.epoch == 1 and all(torch.isfinite(v).all() for v in ckpt.model.values()
                                   if v.is_floating_point())
    _NanAt.calls = 0
    train(small_config(tmp_path, method="nan-test", epochs=3, steps=1, skip_nonfinite=1), overwrite=True,
          progress=False, log=lambda _m: None)
    assert load_checkpoint(tmp_path / "nan-test").epoch == 3


def test_unwritable_output_directory_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run([sys.executable, "-m", "agkd_bml", "train", "--method", "standard", "--out",
                        str(blocker / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot create run directory" in r.stderr and "Traceback" not in r.stderr


FLAGS = ["--method", "--arch", "--dataset", "--epochs", "--batch-size", "--eps", "--steps", "--step-size",
         "--lr",
         "--teacher", "--preset", "--config", "--label-smoothing", "--milestones", "--train-limit",
         "--device",
         "--mart", "--no-mart", "--val-n", "--seed", "--skip-nonfinite", "--resume", "--overwrite"]
VALUES = ["standard", "agkd-bml", "wrn-16-1", "small-cnn", "digits", "npz:/nope.npz", "0", "-1", "1", "8/255",
          "8",
          "1e9", "nan", "cuda", "cpu", "paper-cifar10", "x", "", "1/0", "0.5", "2", "/"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=8)),
                     max_size=8))
def test_fuzzed_train_arguments_never_give_a_traceback(tmp_path, args):
    threads = torch.get_num_threads()
    try:
        code = main(["train", *args, "--dry-run", "--no-progress", "--out", str(tmp_path / "fuzz")])
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        code = exc.code
    finally:
        torch.set_num_threads(threads)
    assert code in (0, 2)


_ARRAY = st.builds(
    lambda dtype, shape, fill: np.full(shape, fill).astype(dtype),
    st.sampled_from([np.uint8, np.int64, np.float32, np.bool_]),
    st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple),
    st.integers(-2, 12),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.dictionaries(st.sampled_from(["x_train", "y_train", "x_test", "y_test", "other"]), _ARRAY))
@example(arrays={"x_train": np.uint8(0), "y_train": np.zeros(0, np.uint8), "x_test": np.uint8(0),
                 "y_test": np.uint8(0)})
@example(arrays={"x_train": np.zeros((2, 0, 0), np.uint8), "y_train": np.array([0, 1]),
                 "x_test": np.zeros((2, 0, 0), np.uint8), "y_test": np.array([0, 1])})
def test_fuzzed_npz_contents_load_or_give_a_user_error(tmp_path, arrays):
    path = tmp_path / "fuzz.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    try:
        ds = load_dataset(f"npz:{path}")
    except UserError:
        return
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.max() < ds.spec.num_classes


def test_npz_that_is_not_a_zip_is_a_user_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(os.urandom(64))
    with pytest.raises(UserError, match="readable"):
        load_dataset(f"npz:{path}")


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    from agkd_bml.fileio import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "t.md", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "t.md").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_a_checkpoint_written_before_the_record_existed_still_loads(tmp_path, digits):
    """Checkpoints of earlier versions are plain dicts without the scaler and metrics parts: they load."""
    from agkd_bml.models import build_model
    from agkd_bml.models.checkpoint import FORMAT, load_model, weights_checksum

    torch.manual_seed(0)
    net = build_model("small-cnn", digits.spec)
    weights = net.state_dict()
    old = {"format": FORMAT, "arch": "small-cnn", "data": digits.spec.to_dict(),
           "config": {"method": "standard"},
           "epoch": 4, "model": weights, "optimizer": {}, "scheduler": {},
           "checksum": weights_checksum(weights)}
    torch.save(old, tmp_path / "last.pt")
    model, ckpt = load_model(tmp_path)
    assert ckpt.epoch == 4 and ckpt.arch == "small-cnn" and ckpt.scaler == {} and ckpt.metrics == {}
    assert ckpt.data == digits.spec and all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    del old["epoch"]
    torch.save(old, tmp_path / "last.pt")
    with pytest.raises(UserError, match="missing or malformed"):
        load_model(tmp_path)


def test_a_full_disk_during_a_checkpoint_names_the_last_good_one_and_the_resume(tmp_path, monkeypatch):
    """A full disk ended in a raw `RuntimeError: [enforce fail at inline_container.cc:672]` traceback."""
    import torch
    from conftest import small_config

    from agkd_bml.errors import UserError
    from agkd_bml.train import load_checkpoint, train

    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *a, **kw):  # the second checkpoint meets a full disk
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *a, **kw)

    cfg = small_config(tmp_path, method="standard", epochs=2, val_n=0)
    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(UserError,
                       match=r"is the disk full\?\). The last good checkpoint is .*prev.pt \(epoch "
                             r"1\).*--resume"):
        train(cfg, progress=False, log=lambda _m: None)
    monkeypatch.setattr(torch, "save", real_save)
    train(cfg, resume=True, progress=False, log=lambda _m: None)
    assert load_checkpoint(tmp_path / "standard").epoch == 2


def test_a_whole_pickled_model_and_a_truncated_file_say_what_to_do(tmp_path, teacher_run, capsys):
    import shutil

    import torch

    from agkd_bml.cli import main
    from agkd_bml.errors import UserError
    from agkd_bml.train import load_checkpoint

    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)), whole)
    with pytest.raises(UserError, match=r"whole pickled model \(torch.save\(model\)\).*state_dict\(\)"):
        load_checkpoint(whole)
    factory = tmp_path / "f.py"
    factory.write_text("import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                       "torch.nn.Linear(256, 10))\n")
    assert main(["eval", f"py:{factory}:make", "--model-weights", str(whole), "--dataset", "digits",
                 "--attacks", "clean"]) == 2
    assert "save model.state_dict() instead" in capsys.readouterr().err
    cut = tmp_path / "cut.pt"
    shutil.copy(Path(teacher_run) / "last.pt", cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UserError, match="cut short or damaged .*prev.pt holds the epoch before"):
        load_checkpoint(cut)


HOLD = """
import sys, time
from agkd_bml.fileio import hold_lock
hold_lock(sys.argv[1], "x")
print("holding", flush=True)
time.sleep(120)
"""


def _holder(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_run_folder_in_use_is_refused_naming_the_process_and_a_crash_releases_it(tmp_path):
    """The same `train --out R` started three times at once ran three times, each exit 0, and R/metrics.jsonl
    held every epoch three times, interleaved."""
    from agkd_bml.errors import UserError
    from agkd_bml.train import load_checkpoint, train

    cfg = small_config(tmp_path, method="standard")
    proc = _holder(Path(cfg.runtime.out) / ".lock")
    try:
        with pytest.raises(UserError, match=rf"run folder .* is in use by process {proc.pid} "):
            train(cfg, progress=False, log=lambda _m: None)
    finally:
        proc.kill()  # a crash: the operating system releases the lock
        proc.wait()
    train(cfg, progress=False, log=lambda _m: None)
    assert load_checkpoint(cfg.runtime.out).epoch == 1
    assert len((Path(cfg.runtime.out) / "metrics.jsonl").read_text().splitlines()) == 1


def test_an_evaluation_point_in_use_is_refused_naming_the_process(tmp_path, teacher_run, capsys):
    out = tmp_path / "e"
    args = ["eval", teacher_run, "--attacks", "clean,pgd-2", "--n", "16", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    locks = sorted((out / "state").glob("*.lock"))  # one per point computed (left behind, unlocked)
    assert locks
    for point in (out / "state").glob("*.pt"):
        point.unlink()  # the points must be computed again...
    holders = [_holder(lock) for lock in locks]  # ...while other processes compute them
    try:
        capsys.readouterr()
        assert main(args) == 2
        assert any(f"is in use by process {p.pid}" in capsys.readouterr().err for p in holders)
    finally:
        for p in holders:
            p.kill()
            p.wait()
    assert main(args) == 0  # the holders died: their locks went with them
