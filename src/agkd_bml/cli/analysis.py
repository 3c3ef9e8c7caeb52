"""``agkd-bml knn``, ``tsne``, ``attention`` and ``report``: the analyses behind the paper's figures.

Each returns a Markdown section and writes its files, so ``report`` is ``eval``, ``curves`` and all of them in
a row, called as the typed functions they are. """

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agkd_bml.analysis.attention import attention_figures
from agkd_bml.analysis.embeddings import embed
from agkd_bml.analysis.knn import METRICS, knn_predict
from agkd_bml.analysis.timing import run_timing, timing_table
from agkd_bml.analysis.training_curves import plot_training
from agkd_bml.analysis.tsne import tsne_figure
from agkd_bml.attacks import Attack, full_length, parse_attacks
from agkd_bml.cli.options import add_eval_options, command_handler
from agkd_bml.data import Dataset
from agkd_bml.errors import UserError
from agkd_bml.evaluation import EvalOptions, ModelLoader, require_positive
from agkd_bml.evaluation.runs import curves, evaluate_checkpoints
from agkd_bml.fileio import write_text


def _attack(spec: str, loader: ModelLoader, data: Dataset) -> Attack:
    attacks = parse_attacks(spec, eps=loader.eps(data), num_classes=data.spec.num_classes)
    if len(attacks) != 1:
        raise UserError(f"--attack takes one attack spec; got {spec!r}")
    return full_length(attacks[0])  # AEs that are looked at, not only counted


def knn(
    checkpoints: Sequence[str], *, k: int = 50, metric: str = "cosine", index_limit: int | None = None,
    attack: str = "pgd-20", out: str | None = None, options: EvalOptions = EvalOptions(),
) -> str:
    """``agkd-bml knn``: k-NN on penultimate embeddings vs the softmax head, clean and attacked (Table 9)."""
    require_positive(n=options.n, batch_size=options.batch_size, k=k, index_limit=index_limit)
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    loader = ModelLoader(options, features=True)
    rows = []
    for path in checkpoints:
        label, model, data, x, y = loader.model(path)
        adv = _attack(attack, loader, data)
        m = data.x_train.shape[0] if index_limit is None else min(index_limit, data.x_train.shape[0])
        if k > m:
            raise UserError(f"--k {k} is larger than the index ({m} training images)")
        embedded = functools.partial(embed, model, batch_size=options.batch_size, device=loader.device,
                                     seed=options.seed)
        index = embedded(data.x_train[:m], data.y_train[:m])
        row: dict[str, Any] = {"model": label, "k": k, "metric": metric, "index": m, "n": int(x.shape[0]),
               "attack": adv.describe()}
        for split, emb in (("clean", embedded(x, y)), (adv.name, embedded(x, y, attack=adv))):
            pred = knn_predict(index.embedding, index.labels, emb.embedding, k=k, metric=metric,
                               num_classes=data.spec.num_classes)
            row[f"softmax {split}"] = float((emb.pred == y).float().mean())
            row[f"knn {split}"] = float((pred == y).float().mean())
        rows.append(row)
    cols = [c for c in rows[0] if c.startswith(("softmax", "knn"))]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {r['model']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in cols) + " |" for r in rows]
    first = rows[0]
    lines += ["",
              f"Accuracy (%) on the first n={first['n']} test images (all of them, attacked or not). k-NN: "
              f"k={k}, {metric} distance, index = embeddings of the first {first['index']} training images. "
              f"AEs crafted against the softmax head: {first['attack']}; seed {options.seed}."]
    text = "\n".join(lines)
    print(text)
    if out:
        _write_knn(rows, text, Path(out))
    return text


def _write_knn(rows: list[dict], text: str, out: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(out / "knn.md", text + "\n")
    write_text(out / "knn.csv", buf.getvalue())
    write_text(out / "knn.json", json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out / 'knn.md'}, knn.csv, knn.json", file=sys.stderr)


def _classes(text: str | None, names: tuple[str, ...]) -> list[int]:
    if not text:
        return [0, 1]
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in names:
            out.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            out.append(int(item))
        else:
            raise UserError(f"unknown class {item!r}; classes are {', '.join(names)} (or their indices)")
    return out


def tsne(
    checkpoints: Sequence[str], *, classes: str | None = None, per_class: int = 100, attack: str = "pgd-20",
    out: str = "tsne", options: EvalOptions = EvalOptions(),
) -> str:
    """``agkd-bml tsne``: t-SNE of clean embeddings and of one class's AEs, one column per model."""
    require_positive(per_class=per_class, batch_size=options.batch_size)
    loader = ModelLoader(options, features=True)
    panels = {}
    names: tuple[str, ...] = ()
    adv: Attack | None = None
    for path in checkpoints:
        label, model, data, x, y = loader.model(path)
        names = data.spec.class_names
        chosen = _classes(classes, names)
        adv = _attack(attack, loader, data)
        # the first per_class test images of every class (clean), and of each chosen class (attacked)
        keep = torch.cat([(y == c).nonzero().squeeze(1)[:per_class] for c in range(data.spec.num_classes)])
        embedded = functools.partial(embed, model, batch_size=options.batch_size, device=loader.device,
                                     seed=options.seed)
        clean = embedded(x[keep], y[keep])
        advs = {c: embedded(x[keep][y[keep] == c], y[keep][y[keep] == c], attack=adv) for c in chosen}
        panels[label] = (clean, advs)
    assert adv is not None  # checkpoints: at least one (argparse's nargs="+")
    title = f"t-SNE of penultimate embeddings (scikit-learn, seed {options.seed}); AEs: {adv.describe()}"
    files = tsne_figure(panels, names, Path(out) / "tsne", title=title, seed=options.seed)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return f"![t-SNE]({files[0].name})\n\n{title}; up to {per_class} clean test images per class."


def attention(
    checkpoints: Sequence[str], *, images: int = 8, teacher: str | None = None, attack: str = "pgd-20",
    out: str = "attention", options: EvalOptions = EvalOptions(),
) -> str:
    """``agkd-bml attention``: the teacher's and each model's attention maps, and Grad-CAM (Figures 1, 4)."""
    require_positive(images=images)
    loader = ModelLoader(options, features=True)
    models: dict[str, nn.Module] = {}
    data: Dataset | None = None
    for path in checkpoints:
        label, model, data, _, _ = loader.model(path)
        models[label] = model
        if teacher is None:
            saved = loader.configs[path].model.teacher
            teacher = saved if saved and Path(saved).exists() else None
    teacher_model = loader.source(teacher) if teacher else None
    assert data is not None  # checkpoints: at least one (argparse's nargs="+")
    adv = _attack(attack, loader, data)
    x, y = data.x_test[:images], data.y_test[:images]
    files = attention_figures(models, teacher_model, x, y, adv, data.spec.class_names, Path(out),
                              device=loader.device, seed=options.seed)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    who = f"teacher {teacher}" if teacher_model else "no teacher (give --teacher)"
    return (f"![attention](attention.png)\n\nClass-irrelevant attention maps on the first {images} test "
            f"images; {who}. AEs: {adv.describe()}.\n\n![Grad-CAM](gradcam.png)\n\nGrad-CAM of the true and "
            "the predicted class on each model's AE.")


def report(
    runs: Sequence[str], *, out: str = "report", attacks: str = "clean,fgsm,pgd-20,cw-20", n: int = 1000,
    curve_n: int = 500, k: int = 50, index_limit: int = 10000, classes: str | None = None,
    per_class: int = 100,
    images: int = 6, teacher: str | None = None, options: EvalOptions = EvalOptions(),
) -> Path:
    """``agkd-bml report``: evaluation table, curves, k-NN, t-SNE, attention and training time in one page."""
    start = time.perf_counter()
    folder = Path(out)
    on = lambda count: dataclasses.replace(options, n=count)  # noqa: E731 - the sections differ in n only
    sections = [f"# agkd-bml report\n\nRuns: {', '.join(f'`{r}`' for r in runs)}."]
    evaluate_checkpoints(runs, attacks=attacks, out=out, options=on(n))
    sections.append("## Robust accuracy\n\n" + (folder / "eval.md").read_text())
    curves(runs, out=out, options=on(curve_n))
    sections.append(f"## Accuracy vs attack steps and budget\n\n![curves](curves.png)\n\nData: `curves.csv` "
                    f"(first {curve_n} test images).")
    neighbours = knn(runs, k=k, index_limit=index_limit, out=out, options=on(n))
    sections.append("## k-NN on penultimate embeddings\n\n" + neighbours)
    sections.append("## t-SNE\n\n" + tsne(runs, classes=classes, per_class=per_class, out=out,
                                          options=on(None)))
    sections.append("## Attention\n\n" + attention(runs, images=images, teacher=teacher, out=out,
                                                   options=on(None)))
    sections.append("## Training time\n\n" + timing_table([run_timing(r) for r in runs]))
    sections.append(f"Report built in {time.perf_counter() - start:.0f}s.")
    text = "\n\n".join(sections) + "\n"
    write_text(folder / "report.md", text)
    _write_html(text, folder / "report.html")
    print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}", file=sys.stderr)
    return folder / "report.md"


def _write_html(text: str, path: Path) -> None:
    import markdown

    body = markdown.markdown(text, extensions=["tables"])
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>agkd-bml report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head>"
            f"<body>{body}</body></html>\n")
    write_text(path, html)


def training_curves(runs: list[str], *, out: str = "training-curves") -> list[Path]:
    """``agkd-bml training-curves``: the runs' training curves as ``OUT.png`` and ``OUT.pdf``."""
    paths = plot_training(runs, out)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return paths


def add_parsers(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("knn", help="k-NN on penultimate embeddings vs the softmax head (Table 9)",
                       description="Classify clean and attacked test images by a k-NN vote among the "
                                   "embeddings of training images, next to the softmax accuracy.")
    k.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    k.add_argument("--k", type=int, default=50, help="neighbours (default: 50)")
    k.add_argument("--metric", default="cosine", help="cosine or l2 (default: cosine)")
    k.add_argument("--index-limit", type=int, default=None, help="index only the first N training images")
    k.add_argument("--attack", default="pgd-20", help="attack spec for the attacked column (default: pgd-20)")
    k.add_argument("--out", default=None, help="also write knn.md / .csv / .json here")
    add_eval_options(k)
    k.set_defaults(handler=command_handler(knn))

    ts = sub.add_parser("tsne", help="t-SNE of embeddings: clean points by class, one class's AEs in red",
                        description="Figures 3, 6-9: one column per model, one row per chosen class.")
    ts.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    ts.add_argument("--classes", default=None,
                    help="comma-separated class names or indices (default: the first two)")
    ts.add_argument("--per-class", type=int, default=100, help="clean test images per class (default: 100)")
    ts.add_argument("--attack", default="pgd-20")
    ts.add_argument("--out", default="tsne", help="folder for tsne.png / tsne.pdf (default: ./tsne)")
    add_eval_options(ts)
    ts.set_defaults(handler=command_handler(tsne))

    at = sub.add_parser("attention",
                        help="attention maps of AEs vs the teacher's, and Grad-CAM (Figures 1, 4)")
    at.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    at.add_argument("--images", type=int, default=8, help="test images shown (default: 8)")
    at.add_argument("--teacher", default=None,
                    help="clean teacher checkpoint (default: the first run's --teacher)")
    at.add_argument("--attack", default="pgd-20")
    at.add_argument("--out", default="attention",
                    help="folder for attention.png and gradcam.png (default: ./attention)")
    add_eval_options(at)
    at.set_defaults(handler=command_handler(attention))

    tc = sub.add_parser("training-curves",
                        help="plot runs' training: loss terms, lr, held-out clean and PGD, best epoch",
                        description="Plot one or several runs' metrics.jsonl (also of a run still "
                                    "training): each loss term, the learning rate, held-out clean and PGD "
                                    "accuracy, and the epoch best.pt keeps.")
    tc.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    tc.add_argument("--out", default="training-curves", help="OUT.png and OUT.pdf")
    tc.set_defaults(handler=command_handler(training_curves))

    r = sub.add_parser("report",
                       help="one Markdown + HTML page: table, curves, k-NN, t-SNE, attention, timing",
                       description="Evaluate the given runs and write "
                                   "report.md / report.html with every figure.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or checkpoints)")
    r.add_argument("--out", default="report", help="folder of the report (default: ./report)")
    r.add_argument("--attacks", default="clean,fgsm,pgd-20,cw-20",
                   help="attack specs of the table (add aa for AutoAttack)")
    r.add_argument("--n", type=int, default=1000, help="test images for the table and k-NN (default: 1000)")
    r.add_argument("--curve-n", type=int, default=500, help="test images for the curves (default: 500)")
    r.add_argument("--k", type=int, default=50)
    r.add_argument("--index-limit", type=int, default=10000,
                   help="training images in the k-NN index (default: 10000)")
    r.add_argument("--classes", default=None, help="t-SNE classes (default: the first two)")
    r.add_argument("--per-class", type=int, default=100)
    r.add_argument("--images", type=int, default=6, help="images in the attention figures")
    r.add_argument("--teacher", default=None)
    add_eval_options(r, data=False)
    r.set_defaults(handler=command_handler(report))
