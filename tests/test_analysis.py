"""k-NN, t-SNE, attention figures, class-relevant AGKD variants and the report, on real models and data."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config

from agkd_bml.analysis import embed, knn_predict, overlay, upsample
from agkd_bml.cli import main
from agkd_bml.methods.losses import ATTENTION_KINDS, cam_average, grad_cam
from agkd_bml.train import load_model, train


def test_knn_with_k1_on_its_own_index_is_perfect(digits, teacher_run):
    model, _ = load_model(teacher_run)
    emb = embed(model, digits.x_train[:400], digits.y_train[:400])
    for metric in ("cosine", "l2"):
        pred = knn_predict(emb.embedding, emb.labels, emb.embedding, k=1, metric=metric)
        assert torch.equal(pred, emb.labels)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_matches_scikit_learn(digits, teacher_run, metric):
    from sklearn.neighbors import KNeighborsClassifier

    model, _ = load_model(teacher_run)
    index = embed(model, digits.x_train, digits.y_train)
    queries = embed(model, digits.x_test, digits.y_test)
    ours = knn_predict(index.embedding, index.labels, queries.embedding, k=15, metric=metric, chunk=100)
    ref = KNeighborsClassifier(n_neighbors=15, metric="cosine" if metric == "cosine" else "euclidean",
                               algorithm="brute").fit(index.embedding.numpy(), index.labels.numpy())
    theirs = torch.from_numpy(ref.predict(queries.embedding.numpy()))
    assert (ours == theirs).float().mean() >= 0.995  # exact up to ties in distance


def test_attention_overlays_have_the_image_size(digits, teacher_run):
    model, _ = load_model(teacher_run)
    x = digits.x_test[:4].float() / 255
    with torch.no_grad():
        feats = model(x).features
    for amap in (grad_cam(feats, model.fc.weight, digits.y_test[:4]), cam_average(feats, model.fc.weight)):
        assert amap.shape == (4, feats.shape[2] * feats.shape[3]) and amap.min() >= 0 and amap.max() <= 1
        up = upsample(amap, tuple(feats.shape[2:]), x.shape[-1])
        assert up.shape == (4, 16, 16)
        assert overlay(x[0], up[0]).shape == (16, 16, 3)


def test_grad_cam_closed_form_equals_autograd_grad_cam(digits, teacher_run):
    """With GAP + linear head, Grad-CAM's channel weights are the head's weights (see ``grad_cam``)."""
    model, _ = load_model(teacher_run)
    x = digits.x_test[:3].float() / 255
    out = model(x)
    feats = out.features
    cls = digits.y_test[:3]
    (g,) = torch.autograd.grad(out.logits.gather(1, cls[:, None]).sum(), feats)
    alpha = g.mean(dim=(2, 3), keepdim=True)
    ref = (alpha * feats).sum(1).relu().flatten(1)
    ref = (ref - ref.amin(1, keepdim=True)) / (ref.amax(1, keepdim=True) - ref.amin(1, keepdim=True) + 1e-8)
    assert torch.allclose(grad_cam(feats.detach(), model.fc.weight, cls), ref, atol=1e-4)


@pytest.mark.parametrize("kind", [k for k in ATTENTION_KINDS if k != "agkd"])
def test_class_relevant_variants_train_one_epoch(tmp_path, teacher_run, kind):
    cfg = small_config(tmp_path, method="agkd-bml", teacher=teacher_run, attention=kind,
                       out=str(tmp_path / kind))
    train(cfg, progress=False, log=lambda _m: None)
    _, ckpt = load_model(tmp_path / kind)
    assert ckpt.metrics["attention"] == kind and ckpt.metrics["loss"]["agkd"] > 0


def test_class_relevant_map_needs_a_distilling_method(tmp_path, capsys):
    code = main(["train", "--method", "pgd-at", "--dataset", "digits", "--attention", "gc-orig", "--dry-run",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "only applies" in capsys.readouterr().err


def test_report_of_two_runs_has_every_section(tmp_path, teacher_run, capsys):
    student = tmp_path / "agkd-bml"
    train(small_config(tmp_path, method="agkd-bml", teacher=teacher_run, epochs=2, out=str(student)),
          progress=False, log=lambda _m: None)
    out = tmp_path / "report"
    code = main(["report", teacher_run, str(student), "--out", str(out), "--n", "100", "--curve-n", "60",
                 "--index-limit", "300", "--per-class", "15", "--images", "3", "--no-progress", "--device",
                 "cpu",
                 "--classes", "3,8"])
    assert code == 0
    text = (out / "report.md").read_text()
    for section in ("## Robust accuracy", "## Accuracy vs attack", "## k-NN", "## t-SNE", "## Attention",
                    "## Training time"):
        assert section in text
    for f in ("eval.csv", "curves.png", "knn.csv", "tsne.png", "attention.png", "gradcam.png", "report.html"):
        assert (out / f).stat().st_size > 0, f
    assert "<table>" in (out / "report.html").read_text()
    assert "teacher" in text and "agkd-bml" in text


def test_bad_analysis_input_is_a_one_line_error(teacher_run, capsys):
    assert main(["knn", teacher_run, "--k", "0"]) == 2
    assert main(["knn", teacher_run, "--metric", "manhattan"]) == 2
    assert main(["tsne", teacher_run, "--classes", "unicorn", "--out", "/tmp/never"]) == 2
    assert main(["attention", teacher_run, "--attack", "pgd-20,fgsm"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_mcnemar_counts_the_disagreements_and_gives_the_exact_two_sided_p():
    """Only the images the two models disagree on count: 10 to 0 is p = 2 * 0.5**10; agreement on every
    image is no evidence (p = 1); the same disagreements among more agreeing images give the same p."""
    from agkd_bml.evaluation.stats import mcnemar

    a = torch.tensor([True] * 10 + [False] * 5)
    b = torch.tensor([False] * 10 + [False] * 5)
    assert mcnemar(a, b) == (10, 0, pytest.approx(2 * 0.5**10))
    assert mcnemar(a, a) == (0, 0, 1.0)
    agree = torch.ones(100, dtype=torch.bool)
    assert mcnemar(torch.cat([agree, a]), torch.cat([agree, b])) == mcnemar(a, b)
    assert mcnemar(b, a) == (0, 10, pytest.approx(2 * 0.5**10))


def test_paired_gap_and_its_line_through_log_parameters_match_independent_computations():
    """The gap's standard error is that of the mean per-image difference; the line is numpy's weighted fit
    with known variances; a line's own points give no residual scatter, and it carries on beyond them."""
    import math

    import numpy as np

    from agkd_bml.evaluation.stats import log_linear_trend, paired_gap

    g = torch.Generator().manual_seed(0)
    gaps, params = [], [60_000, 240_000, 960_000]
    for p in (0.30, 0.20, 0.15):  # AT robust everywhere it is, AGKD-BML on a subset plus a few of its own
        a = torch.rand(1000, generator=g) < 0.3
        b = (a & (torch.rand(1000, generator=g) > p)) | (torch.rand(1000, generator=g) < 0.02)
        gap = paired_gap(a, b)
        d = a.double() - b.double()
        assert gap.value == pytest.approx(float(d.mean()))
        assert gap.se == pytest.approx(float(d.std(unbiased=False)) / math.sqrt(1000))
        assert (gap.only_a, gap.only_b) == (int((a & ~b).sum()), int((b & ~a).sum()))
        gaps.append(gap)
    trend = log_linear_trend(params, gaps)
    x = np.log(params) / np.log(4)
    se = np.array([gp.se for gp in gaps])
    coef, cov = np.polyfit(x, [gp.value for gp in gaps], 1, w=1 / se, cov="unscaled")
    assert trend.slope == pytest.approx(coef[0]) and trend.slope_se == pytest.approx(math.sqrt(cov[0, 0]))
    assert trend.at(params[0])[0] == pytest.approx(coef[0] * x[0] + coef[1])
    assert trend.residual_p is not None and 0 <= trend.residual_p <= 1
    # points on a line: zero scatter, and the line's value four times beyond the last size is one more slope
    on_line = [type(gp)(value=0.2 - 0.03 * i, se=0.01, only_a=0, only_b=0, n=1000) for i,
               gp in enumerate(gaps)]
    line = log_linear_trend(params, on_line)
    assert line.chi2 == pytest.approx(0, abs=1e-20) and line.residual_p == pytest.approx(1)
    gap, lo, hi = line.at(4 * params[-1])
    assert gap == pytest.approx(0.2 - 0.09) and lo < gap < hi
    # two sizes: the slope's error is the two gaps' errors over their distance in log4
    two = log_linear_trend(params[:2], gaps[:2])
    assert two.residual_p is None
    assert two.slope_se == pytest.approx(math.hypot(gaps[0].se, gaps[1].se) / (x[1] - x[0]))
    assert log_linear_trend(params[:1], gaps[:1]) is None
    with pytest.raises(ValueError):
        paired_gap(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_training_curves_and_tensorboard_show_every_logged_quantity(tmp_path, teacher_run):
    """A run's training could be followed only by reading metrics.jsonl: no curves, no TensorBoard."""
    import pytest

    from agkd_bml.cli import main

    run = tmp_path / "at"
    assert main(["train", "--method", "pgd-at", "--steps", "2", "--epochs", "2", "--train-limit", "128",
                 "--batch-size", "64", "--val-split", "50", "--val-steps", "2", "--tensorboard", "--out",
                 str(run),
                 "--no-progress"]) == 0
    assert main(["training-curves", str(run), teacher_run, "--out", str(tmp_path / "curves")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "curves.pdf").is_file()
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/ce", "lr", "images_per_s", "held_out/val_clean", "held_out/val_pgd"} <= tags
    assert [e.step for e in acc.Scalars("loss/ce")] == [1, 2]
