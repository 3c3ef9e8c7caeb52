"""``agkd-bml reproduce TARGET --scale small|paper``: train what a paper table needs, evaluate, compare.

Each target is a recipe: the runs it needs (trained into ``OUT/runs/<label>-s<seed>``, reused when finished
and resumed when not), the evaluation, and a Markdown section with the paper's numbers beside ours.
``small`` is a fixed configuration that runs on 2 CPU cores on the shared CIFAR-10 file; ``paper`` is the
paper's (WRN-28-10, 200 epochs, torchvision CIFAR-10; a GPU job); ``tiny`` is a smoke test of the recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from agkd_bml.attacks import Attack, fmt_eps
from agkd_bml.config import TrainConfig, resolve
from agkd_bml.data import Dataset
from agkd_bml.errors import UserError, unknown_choice
from agkd_bml.fileio import write_text


@dataclass(frozen=True)
class Scale:
    """Everything that differs between the small, the paper and the smoke-test scale."""

    dataset: str
    arch: str
    train_limit: int | None
    epochs: int
    milestones: tuple[int, ...]
    lr: float
    batch_size: int
    seeds: tuple[int, ...]
    eval_n: int  #: test images for the fast attacks
    aa_n: int  #: test images for AutoAttack
    preset: str | None = None  #: a shipped preset the runs start from (paper scale)


SCALES = {
    # about an hour of training on 2 CPU cores for table2 (12 runs), see docs/reproduction.md
    "small": Scale("npz:../shared/data/cifar10.npz", "small-cnn", 10000, 8, (6,), 0.05, 128, (0, 1), 1000, 500),
    "paper": Scale("cifar10", "wrn-28-10", None, 200, (100, 150), 0.1, 128, (0,), 10000, 10000, "paper-cifar10"),
    "tiny": Scale("digits", "small-cnn", 128, 1, (), 0.05, 64, (0, 1), 32, 8),
}

#: Table 2 of the paper (CIFAR-10): the ablation, each model with its paper training steps.
TABLE2 = [("UM", "standard"), ("AT", "pgd-at"), ("SML", "sml"), ("BML", "bml"), ("AGKD", "agkd"),
          ("AGKD-BML", "agkd-bml")]
PAPER_TABLE2 = {"UM": (31.39, 0.0, 0.0), "AT": (62.42, 45.57, 46.26), "SML": (58.88, 51.59, 48.05),
                "BML": (71.08, 60.51, 56.53), "AGKD": (75.57, 65.93, 60.71), "AGKD-BML": (76.69, 71.02, 63.67)}
#: Table 3 (black-box: PGD-20 AEs of a natural model) and Table 9 (k-NN / softmax, CIFAR-10), paper values.
PAPER_TABLE3 = {"AT": 85.4, "SML": 86.4, "AGKD-BML": 90.75}
PAPER_TABLE9 = {"AT": ("87.1 / 86.2", "47.5 / 45.6"), "SML": ("86.3 / 86.2", "51.7 / 51.6"),
                "AGKD-BML": ("91.9 / 92.0", "71.1 / 71.0")}


def run_config(scale: Scale, method: str, seed: int, out: Path, teacher: Path | None) -> TrainConfig:
    """The training config of one run of a recipe."""
    base = dataclasses.asdict(resolve(scale.preset)) if scale.preset else {}
    if scale.preset:  # the paper preset is AGKD-BML's: other methods keep their own steps and smoothing
        base.update(steps=None, label_smoothing=None)
    base.update(method=method, seed=seed, out=str(out), teacher=str(teacher) if teacher else None)
    if not scale.preset:
        base.update(dataset=scale.dataset, arch=scale.arch, train_limit=scale.train_limit, epochs=scale.epochs,
                    milestones=list(scale.milestones), lr=scale.lr, batch_size=scale.batch_size)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def _train_all(scale: Scale, out: Path, progress: bool) -> dict[tuple[str, int], Path]:
    from agkd_bml.train import train

    runs: dict[tuple[str, int], Path] = {}
    for seed in scale.seeds:
        um = out / "runs" / f"UM-s{seed}"  # the clean model is also the AGKD teacher of its seed
        for label, method in TABLE2:
            run = out / "runs" / f"{label}-s{seed}"
            cfg = run_config(scale, method, seed, run, um if label in ("AGKD", "AGKD-BML") else None)
            print(f"== {label} seed {seed} -> {run}")
            train(cfg, resume=True, progress=progress)
            runs[(label, seed)] = run
    return runs


Accuracies = dict[str, dict[str, list[float]]]  #: model label -> attack name -> accuracy (%) per seed


def _score(acc: Accuracies, label: str, seed: int, model: torch.nn.Module, data: Dataset, n: int,
           attacks: list[Attack], progress: bool) -> None:
    """Add each attack's robust accuracy (%) of one model on the first ``n`` test images to ``acc``."""
    from agkd_bml.evaluate import evaluate_attacks

    n = min(n, data.x_test.shape[0])
    for r in evaluate_attacks(model, data.x_test[:n], data.y_test[:n], attacks, seed=seed, progress=progress,
                              desc=f"{label}-s{seed} "):
        acc.setdefault(label, {}).setdefault(r.attack.name, []).append(100 * r.accuracy)


def _evaluate(runs: dict[tuple[str, int], Path], scale: Scale, progress: bool) -> tuple[Accuracies, float]:
    """Per model label and attack, the robust accuracy (%) of each seed; and the eps used."""
    from agkd_bml.attacks import parse_attacks
    from agkd_bml.data import load_dataset
    from agkd_bml.train import load_model

    data = load_dataset(scale.dataset)
    fast = parse_attacks("clean,fgsm,pgd-20,cw-20", eps=data.spec.default_eps)
    aa = parse_attacks("aa", eps=data.spec.default_eps, num_classes=data.spec.num_classes)
    acc: Accuracies = {}
    for (label, seed), run in runs.items():
        model, _ = load_model(run)
        _score(acc, label, seed, model, data, scale.eval_n, fast, progress)
        _score(acc, label, seed, model, data, scale.aa_n, aa, progress)
    return acc, data.spec.default_eps


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table2(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """Train the six ablation models for every seed, evaluate them, and write ``OUT/table2.md``."""
    scale = SCALES[scale_name]
    start = time.perf_counter()
    runs = _train_all(scale, out, progress)
    trained = time.perf_counter() - start
    acc, eps = _evaluate(runs, scale, progress)
    lines = ["| model | clean | FGSM | PGD-20 | CW-20 | AA | paper FGSM | paper PGD-20 | paper CW-20 |",
             "|---" * 9 + "|"]
    for label, _ in TABLE2:
        a = acc[label]
        paper = " | ".join(f"{v:.2f}" for v in PAPER_TABLE2[label])
        lines.append(f"| {label} | {_cell(a['clean'])} | {_cell(a['fgsm'])} | {_cell(a['pgd-20'])} | "
                     f"{_cell(a['cw-20'])} | {_cell(a['aa'])} | {paper} |")
    lines += ["", f"Scale `{scale_name}`: {scale.arch} on {scale.dataset} ({scale.train_limit or 'all'} training "
              f"images), {scale.epochs} epochs, seeds {list(scale.seeds)} (mean ± standard deviation). Robust "
              f"accuracy (%) on the first {scale.eval_n} test images (AutoAttack: first {scale.aa_n}); L-inf eps "
              f"{fmt_eps(eps)}. FGSM: one step of eps; PGD-20 / CW-20: 20 steps of eps/4 from a random start, "
              "1 restart; AA: standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square-5000). Each method trains with its "
              "paper attack steps (AT and SML 7, BML, AGKD and AGKD-BML 2). The AGKD teacher is the UM run of the "
              f"same seed. Training took {trained / 60:.1f} min here (0 when all runs were already finished)."]
    return _write(out, "table2", "\n".join(lines))


def table3(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """Black-box: PGD-20 AEs crafted on the UM run of each seed, scored on every other model (``table3.md``)."""
    from agkd_bml.attacks import Transfer, full_length, parse_attacks
    from agkd_bml.data import load_dataset
    from agkd_bml.train import load_model

    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    data = load_dataset(scale.dataset)
    eps = data.spec.default_eps
    pgd20 = parse_attacks("pgd-20", eps=eps)[0]  # white-box, as in table2 (each image at its first fooling iterate)
    crafted = full_length(pgd20)  # all 20 steps on the source model
    n = min(scale.eval_n, data.x_test.shape[0])
    acc: Accuracies = {}
    for (label, seed), run in runs.items():
        if label == "UM":
            continue
        black = Transfer("transfer", str(runs[("UM", seed)]), crafted, load_model(runs[("UM", seed)])[0])
        _score(acc, label, seed, load_model(run)[0], data, n, [black, pgd20], progress)
    lines = ["| model | black-box (PGD-20 from UM) | white-box PGD-20 | paper black-box |", "|---|---|---|---|"]
    for label, a in acc.items():
        paper = f"{PAPER_TABLE3[label]:.2f}" if label in PAPER_TABLE3 else "-"
        lines.append(f"| {label} | {_cell(a['transfer'])} | {_cell(a['pgd-20'])} | {paper} |")
    lines += ["", f"Scale `{scale_name}`, seeds {list(scale.seeds)}; first {n} test images. Black-box AEs: "
              f"{crafted.describe()}, crafted on the UM (natural) model of the same seed, as the paper's Table 3 does "
              f"with natural models. White-box: {pgd20.describe()}."]
    return _write(out, "table3", "\n".join(lines))


def table9(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """k-NN (k=50, cosine, training embeddings as index) next to softmax, clean and PGD-20 (``table9.md``)."""
    from agkd_bml.analysis import embed, knn_predict
    from agkd_bml.attacks import full_length, parse_attacks
    from agkd_bml.data import load_dataset
    from agkd_bml.train import load_model

    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    data = load_dataset(scale.dataset).limit_train(scale.train_limit, 0)
    attack = full_length(parse_attacks("pgd-20", eps=data.spec.default_eps)[0])  # the AEs' embeddings are studied
    n = min(scale.eval_n, data.x_test.shape[0])
    x, y = data.x_test[:n], data.y_test[:n]
    acc: Accuracies = {}
    for (label, seed), run in runs.items():
        model, _ = load_model(run)
        index = embed(model, data.x_train, data.y_train)
        for split, emb in (("clean", embed(model, x, y)), ("pgd-20", embed(model, x, y, attack=attack, seed=seed))):
            knn = knn_predict(index.embedding, index.labels, emb.embedding, k=50, num_classes=data.spec.num_classes)
            cell = acc.setdefault(label, {})
            cell.setdefault(f"knn {split}", []).append(100 * float((knn == y).float().mean()))
            cell.setdefault(f"softmax {split}", []).append(100 * float((emb.pred == y).float().mean()))
    lines = ["| model | clean k-NN / softmax | PGD-20 k-NN / softmax | paper clean | paper PGD-20 |", "|---" * 5 + "|"]
    for label, a in acc.items():
        paper = PAPER_TABLE9.get(label, ("-", "-"))
        lines.append(f"| {label} | {_cell(a['knn clean'])} / {_cell(a['softmax clean'])} | "
                     f"{_cell(a['knn pgd-20'])} / {_cell(a['softmax pgd-20'])} | {paper[0]} | {paper[1]} |")
    lines += ["", f"Scale `{scale_name}`, seeds {list(scale.seeds)}; accuracy (%) on the first {n} test images, "
              f"attacked or not; k=50, cosine, index = the {data.x_train.shape[0]} training images' embeddings; "
              f"AEs: {attack.describe()}."]
    return _write(out, "table9", "\n".join(lines))


def figure5(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """Accuracy vs PGD steps and vs eps for UM, AT and AGKD-BML of the first seed (``figure5.png``)."""
    from agkd_bml.data import load_dataset
    from agkd_bml.evaluate import accuracy_curves, write_curves
    from agkd_bml.train import load_model

    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    data = load_dataset(scale.dataset)
    seed = scale.seeds[0]
    n = min(scale.aa_n, data.x_test.shape[0])
    curves = {label: accuracy_curves(load_model(runs[(label, seed)])[0], data.x_test[:n], data.y_test[:n],
                                     eps=data.spec.default_eps, seed=seed, progress=progress, desc=f"{label} ")
              for label in ("UM", "AT", "AGKD-BML")}
    files = write_curves(curves, out, stem="figure5")
    return _write(out, "figure5", f"![Figure 5]({files[1].name})\n\nSeed {seed}, first {n} test images; data in "
                  f"`{files[0].name}`. The paper's Figure 5 compares AGKD-BML, FS and AT on WRN-28-10.")


#: Table 1 (CIFAR-10) of the paper: clean, FGSM, BIM-7, PGD-20, PGD-100, CW-20, CW-100, AA (%).
TABLE1_ATTACKS = "clean,fgsm,bim-7,pgd-20,pgd-100,cw-20,cw-100"
PAPER_TABLE1 = {"UM": (95.99, 31.39, 0.38, 0, 0, 0, 0, 0), "AT": (86.19, 62.42, 54.99, 45.57, 45.22, 46.26, 46.05, 44.04),
                "SML": (86.21, 58.88, 52.60, 51.59, 46.62, 48.05, 47.39, 47.41),
                "AGKD-BML": (91.99, 76.69, 73.81, 71.02, 70.72, 63.67, 62.55, 37.07)}
#: Table 7 of the paper: attack steps, seconds per epoch on one V100, epochs.
PAPER_TABLE7 = {"AT": (7, 502, 200), "SML": (7, 2234, 55), "AGKD-BML": (2, 528, 200)}


def table1(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """White-box attacks of the paper's Table 1 on UM, AT, SML and AGKD-BML (``table1.md``); AA is in table2."""
    from agkd_bml.attacks import parse_attacks
    from agkd_bml.data import load_dataset
    from agkd_bml.train import load_model

    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    data = load_dataset(scale.dataset)
    attacks = parse_attacks(TABLE1_ATTACKS, eps=data.spec.default_eps)
    n = min(scale.eval_n, data.x_test.shape[0])
    acc: Accuracies = {}
    for (label, seed), run in runs.items():
        if label in PAPER_TABLE1:
            _score(acc, label, seed, load_model(run)[0], data, n, attacks, progress)
    names = [a.name for a in attacks]
    lines = ["| model | " + " | ".join(names) + " | paper: " + " / ".join([*names, "aa"]) + " |",
             "|---" * (len(names) + 2) + "|"]
    for label, a in acc.items():
        paper = " / ".join(f"{v:g}" for v in PAPER_TABLE1[label])
        lines.append(f"| {label} | " + " | ".join(_cell(a[k]) for k in names) + f" | {paper} |")
    lines += ["", f"Scale `{scale_name}`, seeds {list(scale.seeds)} (mean ± standard deviation); robust accuracy (%) on "
              f"the first {n} test images. AutoAttack is in `table2.md`.", "",
              *(f"- {a.describe()}" for a in attacks)]
    return _write(out, "table1", "\n".join(lines))


def table7(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """Training time per method (``table7.md``), read from the runs' metrics, beside the paper's V100 times."""
    from agkd_bml.analysis.timing import run_timing

    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    lines = ["| model | attack steps | median s/epoch (seeds) | epochs | images/s | paper s/epoch (V100) | paper epochs |",
             "|---" * 7 + "|"]
    for label, _ in TABLE2:
        rows = [run_timing(runs[(label, seed)]) for seed in scale.seeds]
        paper = PAPER_TABLE7.get(label)
        lines.append(f"| {label} | {rows[0]['steps']} | " + " / ".join(f"{r['median_seconds_per_epoch']:.1f}" for r in rows)
                     + f" | {rows[0]['epochs']} | {statistics.mean(r['images_per_s'] for r in rows):.0f} | "
                     + (f"{paper[1]} | {paper[2]} |" if paper else "- | - |"))
    lines += ["", f"Scale `{scale_name}` ({scale.arch}, {scale.train_limit or 'all'} training images, batch "
              f"{scale.batch_size}) on {rows[0]['device']}. The median over epochs ignores an epoch slowed by "
              "other work on the machine. The paper trains WRN-28-10 on 50,000 images on one V100: compare the "
              "ratios between methods, not the seconds."]
    return _write(out, "table7", "\n".join(lines))


#: Table 6: AGKD (no metric learning) distilling class-relevant Grad-CAM maps or class-irrelevant maps; PGD-20 (%).
TABLE6 = [("GC-orig", "gc-orig"), ("GC-false", "gc-false"), ("CAM-avg", "cam-avg"), ("AGKD", "agkd")]
PAPER_TABLE6 = {"GC-orig": 59.06, "GC-false": 58.86, "CAM-avg": 66.55, "AGKD": 65.93}


def table6(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """Attention variants of the AGKD ablation (``table6.md``): 3 more runs per seed beside table2's AGKD."""
    from agkd_bml.attacks import parse_attacks
    from agkd_bml.data import load_dataset
    from agkd_bml.train import load_model, train

    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    for seed in scale.seeds:
        for label, kind in TABLE6[:-1]:
            run = out / "runs" / f"AGKD-{label}-s{seed}"
            cfg = dataclasses.replace(run_config(scale, "agkd", seed, run, runs[("UM", seed)]), attention=kind)
            print(f"== AGKD with {label} maps, seed {seed} -> {run}")
            train(cfg, resume=True, progress=progress)
            runs[(label, seed)] = run
    data = load_dataset(scale.dataset)
    attacks = parse_attacks("clean,pgd-20", eps=data.spec.default_eps)
    n = min(scale.eval_n, data.x_test.shape[0])
    acc: Accuracies = {}
    for label, _ in TABLE6:
        for seed in scale.seeds:
            _score(acc, label, seed, load_model(runs[(label, seed)])[0], data, n, attacks, progress)
    lines = ["| distilled map | kind | clean | PGD-20 | paper PGD-20 |", "|---" * 5 + "|"]
    for label, kind in TABLE6:
        relevance = "class-relevant" if kind.startswith("gc") else "class-irrelevant"
        lines.append(f"| {label} | {relevance} | {_cell(acc[label]['clean'])} | {_cell(acc[label]['pgd-20'])} | "
                     f"{PAPER_TABLE6[label]:.2f} |")
    lines += ["", f"Scale `{scale_name}`, seeds {list(scale.seeds)}; AGKD without metric learning, 2-step training "
              f"attacks, the UM run of the same seed as teacher; first {n} test images; {attacks[1].describe()}. "
              "GC-orig / GC-false: Grad-CAM of the true class / of the class the AE is attacked towards."]
    return _write(out, "table6", "\n".join(lines))


def _analysis(argv: list[str]) -> str:
    """Run an analysis command exactly as ``agkd-bml ARGV`` would; return its Markdown section."""
    from agkd_bml.analysis import commands
    from agkd_bml.cli import build_parser

    return getattr(commands, argv[0])(build_parser().parse_args(argv))


def _quiet(progress: bool) -> list[str]:
    return [] if progress else ["--no-progress"]


def figure3(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """t-SNE of clean embeddings and of cat / ship AEs for UM, AT and AGKD-BML (``figure3/tsne.png``)."""
    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    seed = scale.seeds[0]
    section = _analysis(["tsne", *(str(runs[(m, seed)]) for m in ("UM", "AT", "AGKD-BML")), "--classes", "3,8",
                         "--out", str(out / "figure3"), "--seed", str(seed), *_quiet(progress)])
    return _write(out, "figure3", section.replace("](", "](figure3/", 1))


def figure4(scale_name: str, out: Path, *, progress: bool = True) -> str:
    """Attention maps of AEs against the teacher's (``figure4/attention.png``) and Grad-CAM (Figure 1)."""
    scale = SCALES[scale_name]
    runs = _train_all(scale, out, progress)
    seed = scale.seeds[0]
    section = _analysis(["attention", *(str(runs[(m, seed)]) for m in ("UM", "AT", "AGKD-BML")), "--teacher",
                         str(runs[("UM", seed)]), "--images", "6", "--out", str(out / "figure4"), "--seed", str(seed),
                         *_quiet(progress)])
    return _write(out, "figure4", section.replace("](", "](figure4/"))


def _write(out: Path, target: str, text: str) -> str:
    write_text(out / f"{target}.md", text + "\n")
    return text


RECIPES = {"table1": table1, "table2": table2, "table3": table3, "table6": table6, "table7": table7, "table9": table9,
           "figure3": figure3, "figure4": figure4, "figure5": figure5}


def reproduce(args: argparse.Namespace) -> int:
    """``agkd-bml reproduce``."""
    if args.target not in RECIPES:
        raise unknown_choice("reproduction target", args.target, RECIPES)
    if args.scale not in SCALES:
        raise unknown_choice("scale", args.scale, SCALES)
    if args.scale == "paper" and not args.yes:
        raise UserError("--scale paper trains WRN-28-10 for 200 epochs per run (days on one GPU); add --yes to start")
    print(RECIPES[args.target](args.scale, Path(args.out), progress=not args.no_progress))
    print(f"wrote {Path(args.out) / (args.target + '.md')}")
    return 0
