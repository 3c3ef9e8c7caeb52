"""Mixed precision: bf16 autocast on the CPU trains, and attacks under
autocast keep their eps-ball exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config

from agkd_bml.attacks import parse_attacks, pgd
from agkd_bml.cli import main
from agkd_bml.data import to_float
from agkd_bml.train import load_model, train
from agkd_bml.train.amp import amp_dtype, autocast, native_bf16


def test_bf16_autocast_trains_agkd_bml_on_cpu(tmp_path, teacher_run):
    cfg = small_config(tmp_path, method="agkd-bml", teacher=teacher_run, amp="bf16", epochs=2)
    lines: list[str] = []
    train(cfg, progress=False, log=lines.append)
    model, ckpt = load_model(cfg.run_dir())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert ckpt.metrics["loss"]["ce"] < 2.3  # below chance-level CE: it learned under bf16
    assert ckpt.metrics["precision"] == "bf16"
    # bf16 on a CPU that only emulates it is slower than float32: the run says so, and only there
    warned = any("no native bf16" in line for line in lines)
    assert warned != native_bf16(torch.device("cpu"))


def test_native_bf16_follows_the_hardware_and_is_recorded(tmp_path):
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if native_bf16(cpu) else None
    assert amp_dtype("native-bf16", cpu) == expected
    cfg = small_config(tmp_path, method="standard", amp="native-bf16", epochs=1)
    lines: list[str] = []
    train(cfg, progress=False, log=lines.append)
    _, ckpt = load_model(cfg.run_dir())
    assert ckpt.metrics["precision"] == ("bf16" if expected else "fp32")
    assert not any("no native bf16" in line for line in lines)


@pytest.mark.parametrize("spec", ["fgsm", "pgd-5", "cw-5", "mim-5"])
def test_attacks_under_bf16_autocast_stay_in_the_eps_ball(digits, teacher_run, spec):
    model, _ = load_model(teacher_run)
    x, y = to_float(digits.x_test[:64]), digits.y_test[:64]
    eps = 0.1
    with autocast(torch.device("cpu"), torch.bfloat16):
        adv = parse_attacks(spec, eps=eps)[0](model, x, y, torch.Generator().manual_seed(0)).images
        targeted = pgd(model, x, (y + 1) % 10, eps=eps, step_size=eps / 4, steps=3, targeted=True)
    for a in (adv, targeted):
        assert a.dtype == torch.float32
        assert (a - x).abs().max() <= eps + 1e-7 and a.min() >= 0 and a.max() <= 1
    with torch.no_grad():
        accuracy = [(model(images).logits.argmax(1) == y).float().mean() for images in (adv, x)]
        assert accuracy[0] < accuracy[1]


def test_amp_choices_decide_what_autocast_does_to_a_real_forward():
    """Each --amp mode on the CPU: the dtype the model's matmuls then run in, not only the name it maps to."""
    from agkd_bml.train.amp import autocast, grad_scaler, native_bf16

    cpu = torch.device("cpu")
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    ran = {}
    for mode in ("auto", "off", "bf16", "native-bf16"):
        dtype = amp_dtype(mode, cpu)
        with autocast(cpu, dtype):
            ran[mode] = layer(x).dtype
        assert not grad_scaler(cpu, dtype).is_enabled()  # bf16 and fp32 need no loss scaling
    # auto is off on the CPU: bf16 is slower on most of them
    assert ran["auto"] == ran["off"] == torch.float32
    assert ran["bf16"] == torch.bfloat16
    assert ran["native-bf16"] == (torch.bfloat16 if native_bf16(cpu) else torch.float32)
    assert grad_scaler(cpu, torch.float16).is_enabled()  # fp16 does


def test_fp16_on_cpu_and_unknown_amp_are_user_errors(tmp_path, capsys):
    for mode in ("fp16", "fp8"):
        code = main(["train", "--method", "standard", "--amp", mode, "--device", "cpu", "--epochs", "1",
                     "--out", str(tmp_path / mode), "--no-progress"])
        assert code == 2
    assert "Traceback" not in capsys.readouterr().err
