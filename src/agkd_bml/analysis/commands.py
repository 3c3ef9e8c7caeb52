"""The analysis commands (knn, tsne, attention, report) as functions of parsed CLI arguments.

Each returns a Markdown section and writes its files, so ``report`` is just all of them in a row.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import torch

from agkd_bml.analysis.attention import attention_figures
from agkd_bml.analysis.embeddings import embed
from agkd_bml.analysis.knn import METRICS, knn_predict
from agkd_bml.analysis.timing import run_timing, timing_table
from agkd_bml.analysis.tsne import tsne_figure
from agkd_bml.attacks import full_length, parse_attacks
from agkd_bml.commands import CheckpointLoader, require_positive
from agkd_bml.errors import UserError
from agkd_bml.fileio import write_text


def _attack(args: argparse.Namespace, loader: CheckpointLoader, data) -> object:
    attacks = parse_attacks(args.attack, eps=loader.eps(data), num_classes=data.spec.num_classes)
    if len(attacks) != 1:
        raise UserError(f"--attack takes one attack spec; got {args.attack!r}")
    return full_length(attacks[0])  # AEs that are looked at, not only counted


def knn(args: argparse.Namespace) -> str:
    """``agkd-bml knn``: k-NN on penultimate embeddings vs the softmax head, clean and attacked (Table 9)."""
    require_positive(args, "n", "batch_size", "k", "index_limit")
    if args.metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}; got {args.metric!r}")
    loader = CheckpointLoader(args)
    rows = []
    for path in args.checkpoints:
        label, model, data, x, y = loader.model(path)
        attack = _attack(args, loader, data)
        m = data.x_train.shape[0] if args.index_limit is None else min(args.index_limit, data.x_train.shape[0])
        if args.k > m:
            raise UserError(f"--k {args.k} is larger than the index ({m} training images)")
        kw = dict(batch_size=args.batch_size, device=loader.device, seed=args.seed)
        index = embed(model, data.x_train[:m], data.y_train[:m], **kw)
        row = {"model": label, "k": args.k, "metric": args.metric, "index": m, "n": int(x.shape[0]),
               "attack": attack.describe()}
        for split, emb in (("clean", embed(model, x, y, **kw)), (attack.name, embed(model, x, y, attack=attack, **kw))):
            pred = knn_predict(index.embedding, index.labels, emb.embedding, k=args.k, metric=args.metric,
                               num_classes=data.spec.num_classes)
            row[f"softmax {split}"] = float((emb.pred == y).float().mean())
            row[f"knn {split}"] = float((pred == y).float().mean())
        rows.append(row)
    cols = [c for c in rows[0] if c.startswith(("softmax", "knn"))]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {r['model']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in cols) + " |" for r in rows]
    first = rows[0]
    lines += ["", f"Accuracy (%) on the first n={first['n']} test images (all of them, attacked or not). k-NN: k={args.k}, "
              f"{args.metric} distance, index = embeddings of the first {first['index']} training images. "
              f"AEs crafted against the softmax head: {first['attack']}; seed {args.seed}."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        out = Path(args.out)
        write_text(out / "knn.md", text + "\n")
        write_text(out / "knn.csv", buf.getvalue())
        write_text(out / "knn.json", json.dumps(rows, indent=2) + "\n")
        print(f"wrote {out / 'knn.md'}, knn.csv, knn.json")
    return text


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


def tsne(args: argparse.Namespace) -> str:
    """``agkd-bml tsne``: t-SNE of clean embeddings and of one class's AEs, one column per model."""
    require_positive(args, "per_class", "batch_size")
    loader = CheckpointLoader(args)
    panels = {}
    names: tuple[str, ...] = ()
    attack = None
    for path in args.checkpoints:
        label, model, data, x, y = loader.model(path)
        names = data.spec.class_names
        classes = _classes(args.classes, names)
        attack = _attack(args, loader, data)
        # the first per_class test images of every class (clean), and of each chosen class (attacked)
        keep = torch.cat([(y == c).nonzero().squeeze(1)[: args.per_class] for c in range(data.spec.num_classes)])
        kw = dict(batch_size=args.batch_size, device=loader.device, seed=args.seed)
        clean = embed(model, x[keep], y[keep], **kw)
        advs = {c: embed(model, x[keep][y[keep] == c], y[keep][y[keep] == c], attack=attack, **kw) for c in classes}
        panels[label] = (clean, advs)
    title = f"t-SNE of penultimate embeddings (scikit-learn, seed {args.seed}); AEs: {attack.describe()}"
    files = tsne_figure(panels, names, Path(args.out) / "tsne", title=title, seed=args.seed)
    for f in files:
        print(f"wrote {f}")
    return f"![t-SNE]({files[0].name})\n\n{title}; up to {args.per_class} clean test images per class."


def attention(args: argparse.Namespace) -> str:
    """``agkd-bml attention``: the teacher's and each model's attention maps, and Grad-CAM (Figures 1, 4)."""
    require_positive(args, "images")
    loader = CheckpointLoader(args)
    models = {}
    data = None
    teacher_path = args.teacher
    for path in args.checkpoints:
        label, model, data, _, _ = loader.model(path)
        models[label] = model
        if teacher_path is None:
            saved = loader.configs[path].get("teacher")
            teacher_path = saved if saved and Path(saved).exists() else None
    teacher = loader.source(teacher_path) if teacher_path else None
    attack = _attack(args, loader, data)
    x, y = data.x_test[: args.images], data.y_test[: args.images]
    files = attention_figures(models, teacher, x, y, attack, data.spec.class_names, Path(args.out),
                              device=loader.device, seed=args.seed)
    for f in files:
        print(f"wrote {f}")
    who = f"teacher {teacher_path}" if teacher else "no teacher (give --teacher)"
    return (f"![attention](attention.png)\n\nClass-irrelevant attention maps on the first {args.images} test images; "
            f"{who}. AEs: {attack.describe()}.\n\n![Grad-CAM](gradcam.png)\n\nGrad-CAM of the true and the "
            "predicted class on each model's AE.")


def report(args: argparse.Namespace) -> Path:
    """``agkd-bml report``: evaluation table, curves, k-NN, t-SNE, attention and training time in one page."""
    from agkd_bml.commands import curves, evaluate_checkpoints

    start = time.perf_counter()
    out = Path(args.out)
    common = dict(checkpoints=args.runs, batch_size=args.batch_size, eps=args.eps, seed=args.seed, dataset=None,
                  data_dir=None, device=args.device, no_progress=args.no_progress)
    ns = argparse.Namespace
    sections = [f"# agkd-bml report\n\nRuns: {', '.join(f'`{r}`' for r in args.runs)}."]
    evaluate_checkpoints(ns(**common, attacks=args.attacks, n=args.n, step_size=None, restarts=1, targeted=False,
                            out=str(out)))
    sections.append("## Robust accuracy\n\n" + (out / "eval.md").read_text())
    curves(ns(**common, n=args.curve_n, out=str(out)))
    sections.append(f"## Accuracy vs attack steps and budget\n\n![curves](curves.png)\n\nData: `curves.csv` "
                    f"(first {args.curve_n} test images).")
    sections.append("## k-NN on penultimate embeddings\n\n" + knn(ns(
        **common, n=args.n, k=args.k, metric="cosine", index_limit=args.index_limit, attack="pgd-20", out=str(out))))
    sections.append("## t-SNE\n\n" + tsne(ns(**common, n=None, per_class=args.per_class, classes=args.classes,
                                               attack="pgd-20", out=str(out))))
    sections.append("## Attention\n\n" + attention(ns(**common, n=None, images=args.images, teacher=args.teacher,
                                                       attack="pgd-20", out=str(out))))
    sections.append("## Training time\n\n" + timing_table([run_timing(r) for r in args.runs]))
    sections.append(f"Report built in {time.perf_counter() - start:.0f}s.")
    text = "\n\n".join(sections) + "\n"
    write_text(out / "report.md", text)
    import markdown

    body = markdown.markdown(text, extensions=["tables"])
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>agkd-bml report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head>"
            f"<body>{body}</body></html>\n")
    write_text(out / "report.html", html)
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return out / "report.md"
