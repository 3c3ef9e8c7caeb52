"""The table2 recipe runs end to end on a tiny budget, so it cannot rot, and reuses finished runs."""

from __future__ import annotations

from agkd_bml.cli import main
from agkd_bml.cli.recipes import SCALES, TABLE2, run_config
from agkd_bml.cli.reproduce import TABLES


def test_reproduce_table2_tiny_end_to_end_and_reuses_runs(tmp_path, capsys):
    assert main(["reproduce", "table2", "--scale", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    table = (tmp_path / "table2.md").read_text()
    for label, _ in TABLE2:
        assert f"| {label} |" in table
        assert TABLES["table2"].paper[label][1] in table  # the paper's PGD-20 beside ours
    assert "±" in table  # two seeds: mean ± standard deviation
    for seed in SCALES["tiny"].seeds:
        assert (tmp_path / "runs" / f"AGKD-BML-s{seed}" / "last.pt").is_file()
    capsys.readouterr()
    assert main(["reproduce", "table2", "--scale", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("already finished 1 epoch") == len(TABLE2) * len(SCALES["tiny"].seeds)
    for target, marker in (("table1", "pgd-100"), ("table3", "black-box"), ("table6", "GC-false"), ("table7", "s/epoch"), ("table9", "k-NN"),
                           ("figure3", "figure3/tsne.png"), ("figure4", "figure4/attention.png"),
                           ("figure5", "figure5.png")):
        assert main(["reproduce", target, "--scale", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
        assert marker in (tmp_path / f"{target}.md").read_text()
    assert (tmp_path / "figure5.pdf").stat().st_size > 0
    assert (tmp_path / "figure3" / "tsne.png").stat().st_size > 0
    assert (tmp_path / "figure4" / "attention.png").stat().st_size > 0


def test_paper_scale_uses_the_paper_preset_with_each_methods_own_steps(tmp_path):
    at = run_config(SCALES["paper"], "pgd-at", 0, tmp_path / "at", None)
    agkd = run_config(SCALES["paper"], "agkd-bml", 0, tmp_path / "a", tmp_path / "um")
    assert at.arch == agkd.arch == "wrn-28-10" and at.epochs == 200 and at.steps is None
    assert agkd.teacher == str(tmp_path / "um") and at.teacher is None


def test_reproduce_refuses_bad_input(tmp_path, capsys):
    assert main(["reproduce", "table99", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "table2", "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "table2", "--scale", "paper", "--out", str(tmp_path)]) == 2  # needs --yes
    assert "Traceback" not in capsys.readouterr().err
