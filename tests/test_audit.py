"""The gradient-masking audit flags masked models and passes an honestly robust one; curves are monotone."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config
from torch import nn

from agkd_bml.cli import main
from agkd_bml.data import load_dataset
from agkd_bml.evaluation import audit
from agkd_bml.models import MODELS, ModelOutput
from agkd_bml.models.small_cnn import small_cnn
from agkd_bml.train import load_model, train

AUDIT = ["--n", "200", "--square-queries", "300", "--no-progress", "--device", "cpu"]


class Quantize(nn.Module):
    """Input quantisation, a classic 'defense': rounding has a zero gradient almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 2) / 2


def _masked_small_cnn(channels: int) -> tuple[nn.Module, int]:
    backbone, out = small_cnn(channels)
    return nn.Sequential(Quantize(), backbone), out


@pytest.fixture(scope="module")
def pgd_at_run(quickstart_runs) -> str:
    """The quickstart's PGD-AT-7 student: robust without masking."""
    return str(quickstart_runs[0] / "pgd-at-7")


def test_audit_passes_an_honest_pgd_at_model(pgd_at_run, teacher_run, capsys):
    code = main(["audit", pgd_at_run, "--source", teacher_run, *AUDIT])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "FAIL" not in text and "verdict: PASS" in text and "transfer is no stronger" in text


def test_audit_flags_input_quantisation(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "masked-small-cnn", _masked_small_cnn)
    cfg = small_config(tmp_path, method="standard", arch="masked-small-cnn", epochs=4, train_limit=None,
                       val_n=0,
                       out=str(tmp_path / "masked"))
    train(cfg, progress=False, log=lambda _m: None)
    code = main(["audit", str(tmp_path / "masked"), *AUDIT, "--out", str(tmp_path / "report")])
    text = capsys.readouterr().out
    assert code == 1, text
    assert "FAIL  gradients are non-zero" in text and "verdict: FAIL" in text
    assert (tmp_path / "report" / "audit.json").is_file()


class Saturated(nn.Module):
    """Logits multiplied by 1e4, then a softmax: predictions unchanged, gradients flushed to zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = self.model(x)
        return ModelOutput(torch.softmax(out.logits * 1e4, dim=1), out.features, out.embedding)


def test_audit_flags_saturated_logits(teacher_run):
    model, _ = load_model(teacher_run)
    data = load_dataset("digits")
    checks = {c.name: c for c in audit(Saturated(model), data.x_test[:150], data.y_test[:150], eps=0.1,
                                       num_classes=10, square_queries=200)}
    assert checks["gradients are non-zero"].passed is False
    assert checks["an unbounded attack breaks the model"].passed is False


def test_bad_audit_input_is_a_one_line_error(pgd_at_run, capsys):
    assert main(["audit", pgd_at_run, "--tolerance", "2", *AUDIT]) == 2
    assert main(["audit", pgd_at_run, "--n", "0"]) == 2
    assert main(["audit", pgd_at_run, "--source", "/nope"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_curves_fall_with_steps_and_eps_and_write_plots(pgd_at_run, tmp_path, capsys):
    assert main(["curves", pgd_at_run, "--n", "150", "--out", str(tmp_path), "--no-progress"]) == 0
    for ext in ("csv", "png", "pdf"):
        assert (tmp_path / f"curves.{ext}").stat().st_size > 0
    rows = (tmp_path / "curves.csv").read_text().splitlines()[1:]
    by_eps = [float(r.split(",")[5]) for r in rows if ",eps," in r]
    assert by_eps[0] > 0.9 and by_eps[-1] < by_eps[0] - 0.5  # eps 0 is clean; 2.5x eps breaks the model
    assert all(b <= a + 0.02 for a, b in zip(by_eps, by_eps[1:], strict=False))
