"""The training configuration: presets, YAML files, the methods' own hyper-parameters, the environment."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import small_config

from agkd_bml.cli import main
from agkd_bml.config import SECTION_OF, TrainConfig
from agkd_bml.errors import UserError
from agkd_bml.methods import METHODS, PARAMS
from agkd_bml.migration import ADDED, migrate, read_config_yaml
from agkd_bml.train import load_checkpoint, resolve, train
from agkd_bml.train.settings import complete
from agkd_bml.train.trainer import RESUMABLE_CHANGES

ROOT = Path(__file__).resolve().parents[1]


def test_presets_resolve_to_the_paper_hyper_parameters():
    from agkd_bml.train import resolve

    p = resolve("paper-cifar10-7step")
    assert (p.model.arch, p.attack.steps, p.optim.milestones, p.optim.epochs, p.optim.lr,
            p.optim.label_smoothing) == ("wrn-28-10", 7, [150], 155, 0.1, 0.5)
    r = resolve("released-code-10step")
    assert r.params["mart"] and r.model.init_from_teacher and r.attack.steps == 10
    s = resolve("paper-svhn", overrides={"epochs": 3})
    assert (s.data.dataset, s.optim.lr, s.optim.milestones, s.optim.epochs) == ("svhn", 0.01, [60, 90], 3)


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("0", "0")])
def test_huge_pages_for_cpu_tensors_by_default_and_the_user_can_opt_out(preset, expected):
    """The command line turns on PyTorch's THP allocation unless the environment already says otherwise (the
    library itself leaves its host process alone: tests/test_public_api.py)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    code = "import os, agkd_bml.cli, torch; torch.zeros(1 << 20); print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected


def test_hyper_parameters_are_declared_by_the_methods_and_offered_as_options(capsys):
    """Every declared hyper-parameter is a train option whose help names the methods that read it."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in PARAMS:
        assert "--" + name.replace("_", "-") in text
    assert "pgd-at 7" in text  # the per-method step defaults come from the registry
    assert {p.name for p in METHODS["trades"].params} == {"beta"}
    assert {p.name for p in METHODS["pgd-at"].params} == set()


def test_a_hyper_parameter_reaches_the_method_and_config_yaml_stays_flat(tmp_path):
    cfg = resolve(overrides={"method": "trades", "beta": 3.0, "dataset": "digits",
                             "out": str(tmp_path / "t")})
    assert cfg.params["beta"] == 3.0 and cfg.to_dict()["beta"] == 3.0 and "params" not in cfg.to_dict()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the flat form round-trips
    run = tmp_path / "run"
    train(small_config(tmp_path, method="trades", beta=1.5, steps=1, out=str(run)), progress=False,
          log=lambda _m: None)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["beta"] == 1.5 and saved["margin"] == 0.03  # every declared parameter is recorded
    assert load_checkpoint(run).config.params["beta"] == 1.5


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"method": "pgd-at", "beta": 3.0}, "only applies to the methods that use it (trades, mart"),
        ({"method": "bml", "attention": "gc-orig"}, "only applies"),
        ({"method": "agkd", "attention": "nope"}, "unknown --attention value"),
    ],
)
def test_a_hyper_parameter_the_method_does_not_read_is_refused(overrides, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        resolve(overrides=overrides)


def test_resume_refuses_a_changed_hyper_parameter(tmp_path):
    cfg = small_config(tmp_path, method="trades", steps=1)
    train(cfg, progress=False, log=lambda _m: None)
    with pytest.raises(UserError, match=r"beta: 6.0 -> 2.0"):
        train(cfg.with_params(beta=2.0), resume=True, progress=False, log=lambda _m: None)


def test_a_yaml_file_may_set_a_hyper_parameter_and_misspelt_keys_are_refused(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("method: sml\nmargin: 0.1\n")
    assert resolve(config_file=str(good)).params["margin"] == 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sml\nmargn: 0.1\n")
    with pytest.raises(UserError, match="unknown config key"):
        resolve(config_file=str(bad))


COMMITTED_RUNS = sorted((ROOT / "reproduce").glob("**/runs/*/config.yaml"))


@pytest.mark.parametrize("path", COMMITTED_RUNS, ids=lambda p: str(p.parent.relative_to(ROOT / "reproduce")))
def test_every_committed_run_reads_back_through_the_migration_with_every_saved_value(path):
    """Old ``config.yaml`` files and checkpoints load as typed records: each saved value where it was, each
    key they lack explained by the migration (:data:`ADDED`), and the checkpoint's record the file's."""
    raw = yaml.safe_load(path.read_text())
    cfg = read_config_yaml(path)
    flat = cfg.to_dict()
    assert {k: flat[k] for k in raw} == raw
    assert set(SECTION_OF) - set(raw) <= set(ADDED)
    complete(cfg).validate()
    best = path.parent / "best.pt"
    # an earlier epoch's: a resume may have changed what RESUMABLE_CHANGES lists (amp, ...)
    if best.is_file():
        saved = load_checkpoint(best).config.to_dict()
        assert {k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES} == \
            {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES}


def test_the_config_is_typed_by_section_and_written_by_its_flat_names():
    cfg = TrainConfig.of(method="trades", epochs=3, eps=0.1, beta=2.0)
    assert (cfg.optim.epochs, cfg.attack.eps, cfg.params) == (3, 0.1, {"beta": 2.0})
    assert cfg.replace(epochs=4, beta=1.0).optim.epochs == 4 and cfg.replace(beta=1.0).params == {"beta": 1.0}
    assert (TrainConfig.from_dict(cfg.to_dict()) == cfg and list(cfg.to_dict())[:3]
            == ["method", "dataset", "data_dir"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.epochs = 5  # type: ignore[misc]
    # what every run before 0.2.0 trained with
    assert migrate({"method": "pgd-at"})["lr_schedule"] == "multistep"


def test_each_method_reads_its_own_frozen_parameter_record_built_from_the_config(tmp_path):
    """A method's hyper-parameters are a typed record of its own (shared ones declared once), filled from the
    config, else from the declared defaults; the options are that record's fields."""
    from agkd_bml.data import load_dataset
    from agkd_bml.methods.base import MethodContext, resolve_attack
    from agkd_bml.methods.params import AttentionParams, BetaParams, MetricParams

    spec = load_dataset("digits").spec
    for name, beta in (("trades", 3.0), ("mart", 6.0)):
        cfg = small_config(tmp_path, method=name, **({"beta": beta} if beta != 6.0 else {}))
        method = METHODS[name](cfg, MethodContext(num_classes=10, attack=resolve_attack(cfg, spec)))
        assert isinstance(method.hp, BetaParams) and method.hp.beta == beta
        with pytest.raises(dataclasses.FrozenInstanceError):
            method.hp.beta = 1.0  # type: ignore[misc]
    agkd_bml = METHODS["agkd-bml"].Params
    assert issubclass(agkd_bml, MetricParams) and issubclass(agkd_bml, AttentionParams)
    assert not issubclass(METHODS["bml"].Params, AttentionParams)  # the ablation has no distilled map
    assert [p.name for p in METHODS["sml"].params] == [f.name for f in dataclasses.fields(MetricParams)]

