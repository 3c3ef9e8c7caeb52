"""The table2 recipe runs end to end on a tiny budget, so it cannot rot, and reuses finished runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agkd_bml.cli import main
from agkd_bml.reproduction.recipes import SCALES, TABLE2, run_config
from agkd_bml.reproduction.targets import TABLES


def _digits_npz(path: Path) -> str:
    """The tiny scale's digits written as an .npz file (HWC uint8, as
    docs/data.md describes): a user's own file."""
    from agkd_bml.data import load_dataset

    d = load_dataset("digits")
    np.savez(path, x_train=d.x_train.permute(0, 2, 3, 1).numpy(), y_train=d.y_train.numpy(),
             x_test=d.x_test.permute(0, 2, 3, 1).numpy(), y_test=d.y_test.numpy())
    return f"npz:{path}"


def test_reproduce_table2_tiny_end_to_end_and_reuses_runs(tmp_path, capsys):
    """Every tiny target, on the user's own data file (`--dataset`): the tiny scale's digits as an .npz."""
    data = ["--dataset", _digits_npz(tmp_path / "digits.npz")]
    out = tmp_path / "out"
    assert main(["reproduce", "table2", "--scale", "tiny", "--out", str(out), "--no-progress", *data]) == 0
    assert data[1] in (out / "runs" / "UM-s0" / "config.yaml").read_text()
    assert "on npz:digits.npz" in (out / "table2.md").read_text()  # the note names the file, not its path
    table = (out / "table2.md").read_text()
    for label, _ in TABLE2:
        assert f"| {label} |" in table
        assert TABLES["table2"].paper[label][1] in table  # the paper's PGD-20 beside ours
    assert "±" in table  # two seeds: mean ± standard deviation
    for seed in SCALES["tiny"].seeds:
        assert (out / "runs" / f"AGKD-BML-s{seed}" / "last.pt").is_file()
    capsys.readouterr()
    configs = {p: p.read_bytes() for p in (out / "runs").glob("*/config.yaml")}
    assert main(["reproduce", "table2", "--scale", "tiny", "--out", str(out), "--no-progress", *data]) == 0
    assert (capsys.readouterr().err.count("already finished 1 epoch") == len(TABLE2)
            * len(SCALES["tiny"].seeds))
    assert {p: p.read_bytes() for p in configs} == configs  # a finished run's files are left as they are
    for target, marker in (("table1", "pgd-100"), ("table3", "black-box"), ("table6", "GC-false"),
                           ("table7", "s/epoch"), ("table9", "k-NN"),
                           ("figure3", "figure3/tsne.png"), ("figure4", "figure4/attention.png"),
                           ("figure5", "figure5.png")):
        assert main(["reproduce", target, "--scale", "tiny", "--out", str(out), "--no-progress", *data]) == 0
        assert marker in (out / f"{target}.md").read_text()
    assert (out / "figure5.pdf").stat().st_size > 0
    assert (out / "figure3" / "tsne.png").stat().st_size > 0
    assert (out / "figure4" / "attention.png").stat().st_size > 0


def test_paper_scale_uses_the_paper_preset_with_each_methods_own_steps(tmp_path):
    at = run_config(SCALES["paper"], "pgd-at", 0, tmp_path / "at", None)
    agkd = run_config(SCALES["paper"], "agkd-bml", 0, tmp_path / "a", tmp_path / "um")
    assert (at.model.arch == agkd.model.arch == "wrn-28-10" and at.optim.epochs == 200
            and at.attack.steps is None)
    assert agkd.model.teacher == str(tmp_path / "um") and at.model.teacher is None
    medium = run_config(SCALES["medium"], "pgd-at", 0, tmp_path / "m", None)
    assert (medium.runtime.amp == "native-bf16" and medium.data.train_limit is None
            and medium.validation.val_split == 1000)


def test_reproduce_refuses_bad_input(tmp_path, capsys):
    assert main(["reproduce", "table99", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "table2", "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "table2", "--scale", "paper", "--out", str(tmp_path)]) == 2  # needs --yes
    assert "Traceback" not in capsys.readouterr().err


def test_multi_step_comparison_tiny_end_to_end(tmp_path, capsys):
    """table1 / table5 at a multi-step scale: faithful teacher, held-out
    selection, AA, worst case, McNemar."""
    out = ["--scale", "tiny-medium", "--out", str(tmp_path), "--no-progress"]
    assert main(["reproduce", "table1", *out]) == 0
    captured = capsys.readouterr()
    status = captured.err  # status lines on stderr, the tables on stdout
    # the deciding pair is scored, and written as a partial table, before the other rows start training
    partial = status.index("(partial: the rows that decide the question")
    assert (status.index("== AGKD-BML-7 seed 1") < partial < status.index("== UM seed 0")
            < status.index("== SML-7 seed 0"))
    first = "| model |" + captured.out.split("| model |")[1]  # the first table printed: the partial one
    assert "| AT-7 | " in first and "| AGKD-BML-7 | " in first and "| UM | " not in first
    assert "**Partial table**: UM, SML-7, TRADES-10, MART-10, AGKD-BML-2 not trained" in first
    assert "exact McNemar p =" in first
    table = (tmp_path / "table1.md").read_text()
    for label in ("UM", "AT-7", "SML-7", "TRADES-10", "MART-10", "AGKD-BML-2", "AGKD-BML-7"):
        assert f"| {label} |" in table
    assert "pgd-20 last it." in table and "scored at its last iterate" in table
    # every baseline against AGKD-BML-7, image by image
    for baseline in ("AT-7", "SML-7", "TRADES-10", "MART-10"):
        assert f"AutoAttack, image by image, {baseline} vs AGKD-BML-7: seed 0:" in table
    assert "image by image, TRADES-10" not in first  # ... once its row is scored
    assert "exact McNemar p =" in table and "weights: best" in table and "| worst |" in table
    runs = tmp_path / "runs"
    assert (runs / "T-s0" / "last.pt").is_file() and (runs / "AGKD-BML-7-s1" / "best.pt").is_file()
    assert not (runs / "SML-7-s1").exists() and (runs / "MART-10-s1" / "best.pt").is_file()  # seeds per row
    started = {r.name: (r / "config.yaml").stat().st_mtime for r in runs.iterdir()}
    # the deciding pair first
    assert started["AGKD-BML-7-s1"] < started["SML-7-s0"] < started["AGKD-BML-2-s0"]
    assert len(list((tmp_path / "state").glob("*.pt"))) > 20  # every evaluated point was saved ...
    assert main(["reproduce", "table1", *out]) == 0
    assert (tmp_path / "table1.md").read_text() == table  # ... and a rerun reads them back to the same table
    from agkd_bml.train import load_checkpoint

    cfg = load_checkpoint(runs / "AGKD-BML-7-s0").config
    assert str(cfg.model.teacher).endswith("T-s0") and cfg.attack.steps == 7
    assert cfg.validation.val_split == 50
    assert cfg.attack.step_size == 0.1 / 4  # 7 steps of eps/4, resolved and recorded in config.yaml
    # 2 steps: step eps (digits: 0.1)
    assert load_checkpoint(runs / "AGKD-BML-2-s0").config.attack.step_size == 0.1
    assert main(["reproduce", "table5", *out]) == 0
    assert "AGKD-BML-10+MART" in (tmp_path / "table5.md").read_text()
    assert load_checkpoint(runs / "AGKD-BML-10+MART-s0").config.model.init_from_teacher is True
    assert main(["reproduce", "table5", "--scale", "tiny", "--out", str(tmp_path)]) == 2


def test_capacity_rows_train_score_and_are_reused_without_training_checkpoints(tmp_path, capsys):
    """`reproduce capacity --only` trains and scores chosen rows (a partial table); a committed study keeps
    best.pt, config.yaml and metrics.jsonl only, and the same command then reuses those runs and their
    evaluation instead of training again."""
    from agkd_bml.data import load_dataset
    from agkd_bml.errors import UserError
    from agkd_bml.models import build_model, check_arch

    args = ["reproduce", "capacity", "--scale", "tiny-medium", "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--only", "w16:AT-7,w16:AGKD-BML-7"]) == 0
    table = (tmp_path / "capacity.md").read_text()
    assert "| w16 | 0.06 M | AT-7 |" in table and "| w16 | 0.06 M | AGKD-BML-7 |" in table
    assert "**Partial table**: w32:AT-7" in table and "exact McNemar" in table
    # one width: no line
    assert "**The AA gap (AT-7 - AGKD-BML-7, points) by width**" in table and "per 4-fold" not in table
    assert ((tmp_path / "capacity.png").stat().st_size > 0 and "w16,small-cnn-w16"
            in (tmp_path / "capacity.csv").read_text())
    runs = tmp_path / "w16" / "runs"
    assert {p.name for p in runs.iterdir()} == {"T-s0", "AT-7-s0", "AGKD-BML-7-s0"}
    before = {p: p.read_text() for p in runs.glob("*/metrics.jsonl")}
    for p in [*runs.glob("*/last.pt"), *runs.glob("*/prev.pt")]:
        p.unlink()
    capsys.readouterr()
    assert main([*args, "--only", "w16:AT-7,w16:AGKD-BML-7"]) == 0
    out = capsys.readouterr().err  # status lines
    assert out.count("reused") == 3 and "\ntraining " not in out  # the trainer's "training METHOD ..." line
    assert ({p: p.read_text() for p in runs.glob("*/metrics.jsonl")} == before and
            not list(runs.glob("*/last.pt")))
    assert (tmp_path / "capacity.md").read_text() == table
    # a call for other rows keeps the rows another call finished and scored,
    # without training or attacking them
    assert main([*args, "--only", "w16:AT-7"]) == 0
    out = capsys.readouterr().err  # status lines
    assert "AGKD-BML-7: finished and scored before" in out and "== T seed" not in out
    assert (tmp_path / "capacity.md").read_text() == table
    # ...and leaves out (as still to do) a row whose run has not finished
    metrics = runs / "AGKD-BML-7-s0" / "metrics.jsonl"
    finished = metrics.read_text()
    metrics.write_text("")  # no epoch finished
    assert main([*args, "--only", "w16:AT-7"]) == 0
    partial = (tmp_path / "capacity.md").read_text()
    assert "| w16 | 0.06 M | AT-7 |" in partial and "| AGKD-BML-7 |" not in partial
    assert ("**Partial table**: w16:AGKD-BML-7, w32:AT-7" in partial and "\ntraining " not
            in capsys.readouterr().err)
    metrics.write_text(finished)
    assert main([*args, "--only", "w17:AT-7"]) == 2 and "SIZE:ROW" in capsys.readouterr().err
    assert main(["reproduce", "table2", "--scale", "tiny", "--out", str(tmp_path), "--only", "w16:AT-7"]) == 2
    # the widths are real models: parameters grow as the base width squared; a zero width is refused
    spec = load_dataset("digits").spec
    sizes = [sum(p.numel() for p in build_model(f"small-cnn-w{w}", spec).parameters()) for w in (16, 32, 64)]
    assert sizes[1] == sum(p.numel() for p in build_model("small-cnn", spec).parameters())
    assert 3.5 < sizes[2] / sizes[1] < 4.1 and 3.5 < sizes[1] / sizes[0] < 4.1
    try:
        check_arch("small-cnn-w0")
        raise AssertionError("small-cnn-w0 was accepted")
    except UserError as exc:
        assert "base width" in str(exc)


def test_reproduce_takes_the_dataset_from_the_user_and_checks_it_before_making_folders(tmp_path, capsys):
    """`reproduce table1 --out X` read a file only this workplace had and left an empty folder behind."""
    out = tmp_path / "out"
    assert main(["reproduce", "table2", "--scale", "small", "--out", str(out), "--no-progress"]) == 2
    assert "--dataset" in capsys.readouterr().err and not out.exists()
    missing = f"npz:{tmp_path / 'nowhere.npz'}"
    assert main(["reproduce", "table2", "--scale", "small", "--dataset", missing, "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    # (the tiny scale on a user's own file: test_reproduce_table2_tiny_end_to_end_and_reuses_runs)


def test_the_same_npz_reached_by_another_path_is_the_same_run(tmp_path):
    from agkd_bml.train.trainer import same_npz

    a, b = tmp_path / "a" / "c.npz", tmp_path / "b" / "c.npz"
    for p, v in ((a, 1), (b, 1)):
        p.parent.mkdir()
        np.savez(p, v=np.array([v]))
    assert same_npz(f"npz:{a}", f"npz:{b}")  # same contents
    np.savez(b, v=np.array([2]))
    assert not same_npz(f"npz:{a}", f"npz:{b}")
    assert same_npz("npz:../elsewhere/c.npz", f"npz:{b}")  # a path of another machine: the file name decides
    assert not same_npz("cifar10", f"npz:{b}")
