"""Attention maps and Grad-CAM overlays (the paper's Figures 1 and 4).

Figure 4: for sample images, the AE, the clean teacher's class-irrelevant map of the clean image, and each
model's map of its AE; AGKD pulls the latter towards the former. Figure 1: Grad-CAM of the true and of the
adversarial class on the AE (closed form for our GAP + linear heads, see ``grad_cam``). """

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agkd_bml.analysis.plotting import pyplot, save_figure
from agkd_bml.attacks import Attack
from agkd_bml.data import to_float
from agkd_bml.methods.losses import attention_map, grad_cam
from agkd_bml.models.modes import eval_mode


def upsample(amap: torch.Tensor, feature_size: tuple[int, int], size: int) -> torch.Tensor:
    """(N, h*w) maps -> (N, size, size), bilinear, back in [0, 1]."""
    maps = amap.reshape(-1, 1, *feature_size).float()
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


def overlay(image: torch.Tensor, amap: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """An (H, W, 3) RGB array in [0, 1]: the image with the jet-coloured map (H, W) blended on top."""
    plt = pyplot()
    img = image.detach().float().cpu()
    rgb = (img.expand(3, -1, -1) if img.shape[0] == 1 else img).permute(1, 2, 0).numpy()
    heat = plt.get_cmap("jet")(amap.detach().float().cpu().numpy())[..., :3]
    return (1 - alpha) * rgb + alpha * heat


def maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """(N, H, W) maps at the image size: class-irrelevant, or Grad-CAM of ``classes`` when given."""
    with torch.no_grad(), eval_mode(model):
        feats = model(x).features
    head = cast(nn.Linear, model.fc)  # a Classifier's linear head (maps need our models' features)
    a = attention_map(feats) if classes is None else grad_cam(feats, head.weight, classes)
    return upsample(a, tuple(feats.shape[2:]), x.shape[-1])


def _show(ax, img: np.ndarray | torch.Tensor, title: str) -> None:
    if isinstance(img, torch.Tensor):
        img = img.float().cpu()
        img = (img.expand(3, -1, -1) if img.shape[0] == 1 else img).permute(1, 2, 0).numpy()
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def attention_figures(
    models: Mapping[str, nn.Module],  # called on images in [0, 1], returning ModelOutput with features
    teacher: nn.Module | None,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    class_names: tuple[str, ...],
    out_dir: Path,
    *,
    device: torch.device,
    seed: int = 0,
) -> list[Path]:
    """Write ``attention.png/pdf`` (Figure 4) and ``gradcam.png/pdf`` (Figure 1) for uint8 images ``x``."""
    plt = pyplot()
    clean = to_float(x.to(device))
    y = y.to(device)
    advs, preds = {}, {}
    for name, model in models.items():
        gen = torch.Generator(device=device).manual_seed(seed)
        advs[name] = attack(model, clean, y, gen).images
        with torch.no_grad(), eval_mode(model):
            preds[name] = model(advs[name]).logits.argmax(1)
    n = x.shape[0]
    cols = 2 + len(models) + (1 if teacher is not None else 0)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.9 * n), squeeze=False)
    teacher_maps = maps(teacher, clean) if teacher is not None else None
    own = {name: maps(m, advs[name]) for name, m in models.items()}
    first = next(iter(models))
    for i in range(n):
        _show(axes[i][0], clean[i], f"clean: {class_names[int(y[i])]}")
        _show(axes[i][1], advs[first][i], f"AE on {first}")
        c = 2
        if teacher_maps is not None:
            _show(axes[i][c], overlay(clean[i], teacher_maps[i]), "teacher, clean")
            c += 1
        for name in models:
            _show(axes[i][c], overlay(advs[name][i], own[name][i]),
                  f"{name}, AE -> {class_names[int(preds[name][i])]}")
            c += 1
    fig.suptitle("Class-irrelevant attention (channel sum of the last conv features); AEs: "
                 f"{attack.describe()}",
                 fontsize=8)
    fig.tight_layout()
    paths = save_figure(fig, out_dir / "attention")

    fig, axes = plt.subplots(n, 3 * len(models), figsize=(1.8 * 3 * len(models), 1.9 * n), squeeze=False)
    for j, (name, model) in enumerate(models.items()):
        true_cam = maps(model, advs[name], y)
        adv_cam = maps(model, advs[name], preds[name])
        for i in range(n):
            _show(axes[i][3 * j], advs[name][i], f"{name}: AE")
            _show(axes[i][3 * j + 1], overlay(advs[name][i], true_cam[i]),
                  f"GC true: {class_names[int(y[i])]}")
            _show(axes[i][3 * j + 2], overlay(advs[name][i], adv_cam[i]),
                  f"GC pred: {class_names[int(preds[name][i])]}")
    fig.suptitle("Grad-CAM of the true and of the predicted class on each model's AE", fontsize=8)
    fig.tight_layout()
    return paths + save_figure(fig, out_dir / "gradcam")
