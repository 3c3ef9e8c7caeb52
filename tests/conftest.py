"""Shared fixtures: the embedded digits data, small real models, and the shared CIFAR-10 file when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from agkd_bml.config import TrainConfig
from agkd_bml.data import load_dataset
from agkd_bml.models import build_model

#: the real image arrays (cifar10.npz): ``AGKD_SHARED_DATA``, else the shared folder beside the checkout;
#: tests that need them skip, saying where they looked, when they are absent
BESIDE = Path(__file__).resolve().parents[1].parent / "shared"  #: the shared folder beside the checkout
SHARED = Path(os.environ.get("AGKD_SHARED_DATA", BESIDE / "data"))
CIFAR = SHARED / "cifar10.npz"

torch.set_num_threads(2)

# The default suite fuzzes with a fixed seed so that a red CI run is always reproducible; `make fuzz` explores
# fresh random cases with many more examples (and finds the bugs we then pin with @example).
settings.register_profile("default", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("fuzz", max_examples=1000, deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def cifar_path() -> str:
    if not CIFAR.is_file():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR} (set AGKD_SHARED_DATA)")
    return str(CIFAR)


@pytest.fixture
def model(digits):
    torch.manual_seed(0)
    return build_model("small-cnn", digits.spec).eval()


def small_config(tmp_path: Path, **kw) -> TrainConfig:
    """A digits run that trains in about a second per epoch."""
    base = dict(dataset="digits", arch="small-cnn", epochs=1, batch_size=64, lr=0.05, train_limit=256,
                val_n=64, val_steps=2, device="cpu", out=str(tmp_path / kw.get("method", "agkd-bml")))
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> str:
    """A real `standard` digits run (the teacher of AGKD tests)."""
    from agkd_bml.train import train

    out = tmp_path_factory.mktemp("teacher")
    cfg = small_config(out, method="standard", epochs=3, train_limit=None, out=str(out / "teacher"))
    train(cfg, progress=False, log=lambda _m: None)
    return str(out / "teacher")


@pytest.fixture(scope="session")
def cifar_pgd_at(tmp_path_factory, cifar_path):
    """(model, checkpoint) of a 1-epoch PGD-AT small CNN on 2,000 CIFAR-10 images."""
    from agkd_bml.config import TrainConfig
    from agkd_bml.train import load_model, train

    out = tmp_path_factory.mktemp("ta") / "pgd-at"
    cfg = TrainConfig.of(method="pgd-at", dataset=f"npz:{cifar_path}", arch="small-cnn", epochs=1,
                         train_limit=2000,
                      steps=3, val_n=0, device="cpu", out=str(out))
    train(cfg, progress=False, log=lambda _m: None)
    return load_model(out)


@pytest.fixture(scope="session")
def quickstart_runs(tmp_path_factory):
    """(directory, clean / PGD-20 rows) of the quickstart (`make demo`): its four digits runs, trained once
    (about 100 s) for the demo's own test and for the tests that need its honest PGD-AT-7 student."""
    from agkd_bml.cli.quickstart import quickstart

    out = tmp_path_factory.mktemp("quickstart")
    return out, quickstart(out, device="cpu", aa_n=10, progress=False)


@pytest.fixture(scope="session")
def reference_autoattack() -> Path:
    """The reference AutoAttack's source folder (``AGKD_REFERENCE_AUTOATTACK``, else the shared copy beside
    the project); tests that compare with it skip where it is absent."""
    path = Path(os.environ.get("AGKD_REFERENCE_AUTOATTACK", BESIDE / "reference" / "auto-attack"))
    if not (path / "autoattack" / "__init__.py").is_file():
        pytest.skip(f"reference AutoAttack not found at {path} (set AGKD_REFERENCE_AUTOATTACK)")
    return path
