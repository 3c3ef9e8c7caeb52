"""The command line: training every method on real CIFAR-10, eval, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agkd_bml.cli import main
from agkd_bml.methods import METHODS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agkd_bml", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def cifar_teacher(tmp_path_factory, cifar_path):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["train", "--method", "standard", "--dataset", f"npz:{cifar_path}", "--arch", "small-cnn",
                 "--epochs", "1", "--train-limit", "256", "--val-n", "32", "--out", str(out),
                 "--no-progress"]) == 0
    return str(out)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_every_method_on_cifar10_then_eval(tmp_path, cifar_path, cifar_teacher, method, capsys):
    out = tmp_path / method
    args = ["train", "--method", method, "--dataset", f"npz:{cifar_path}", "--arch", "small-cnn", "--epochs",
            "1",
            "--train-limit", "256", "--batch-size", "64", "--val-n", "32", "--val-steps", "2", "--out",
            str(out), "--no-progress"]
    if METHODS[method].needs_teacher:
        args += ["--teacher", cifar_teacher]
    assert main(args) == 0
    assert (out / "last.pt").is_file() and (out / "config.yaml").is_file()
    assert main(["eval", str(out), "--attacks", "clean,fgsm,pgd-2", "--n", "32", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| model | clean | fgsm | pgd-2 | worst-case |" in table and f"| {method} |" in table


def test_eval_writes_markdown_csv_json(tmp_path, cifar_teacher):
    assert main(["eval", cifar_teacher, "--attacks", "clean,pgd-1", "--n", "16", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"eval.md", "eval.csv", "eval.json"}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--method", "nope"], "unknown method"),
        (["train", "--arch", "vgg", "--epochs", "1"], "unknown architecture"),
        (["train", "--dataset", "imagenet"], "unknown dataset"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--eps", "8"], "did you mean 8/255"),
        (["train", "--eps", "-0.1"], "must be >= 0"),
        (["train", "--epochs", "0"], "must be positive"),
        (["train", "--batch-size", "-1"], "must be positive"),
        (["train", "--method", "agkd-bml"], "--teacher"),
        (["train", "--config", "/nonexistent.yaml"], "does not exist"),
        (["train", "--device", "cuda"], "CUDA"),
        (["train", "--dataset", "npz:/nonexistent.npz"], "does not exist"),
        (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent"], "does not exist"),
        (["eval", "/nonexistent.pt"], "does not exist"),
        (["eval", "runs", "--attacks", "pgd-x"], "attack spec"),
        (["train", "--epochs", "abc"], "invalid int"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, args, needle):
    run = tmp_path / "run"
    existing = {"config.yaml": "method: standard\n", "metrics.jsonl": '{"epoch": 1}\n'}
    if args[0] == "train":
        run.mkdir()
        for name, text in existing.items():  # an earlier run's files, which a failed command must not touch
            (run / name).write_text(text)
        args = [*args, "--out", str(run), "--resume"]
        if "--method" not in args:
            args += ["--method", "standard"]
    if args[:2] == ["eval", "runs"]:
        args[1] = str(tmp_path)
        (tmp_path / "last.pt").write_bytes(b"")
        args = ["eval", str(tmp_path), "--attacks", "pgd-x"]
    r = run_cli(*args)
    if "cuda" in args and "CUDA" not in r.stderr:
        pytest.skip("CUDA is available here")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    if args[0] == "train":
        assert {p.name: p.read_text() for p in run.iterdir()} == existing


def test_presets_and_methods_list(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("paper-cifar10", "paper-svhn", "paper-cifar10-7step", "released-code-10step"):
        assert name in out
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert all(m in listed for m in METHODS)


def test_progress_bars_write_no_carriage_returns_into_a_log(tmp_path):
    """Without a terminal (a log file, CI) the bars stay off even without --no-progress."""
    def run(*args: str) -> subprocess.CompletedProcess:  # bytes: text mode would turn "\r" into "\n"
        return subprocess.run([sys.executable, "-m", "agkd_bml", *args], capture_output=True, timeout=300)

    r = run("train", "--method", "pgd-at", "--steps", "1", "--dataset", "digits", "--epochs", "1",
            "--train-limit", "256", "--val-n", "32", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert b"\r" not in r.stderr + r.stdout and b"epoch 1/1" in r.stderr  # a status line
    r = run("eval", str(tmp_path / "run"), "--attacks", "clean,pgd-2", "--n", "32")
    assert r.returncode == 0 and b"\r" not in r.stderr + r.stdout


def test_every_option_of_every_subcommand_reaches_a_parameter_of_its_function():
    """Options were matched to parameters by name, so a misnamed option was parsed and silently dropped."""
    import argparse

    from agkd_bml.cli import build_parser
    from agkd_bml.cli.options import unmatched_options

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, parser in sub.choices.items():
        fn = getattr(parser.get_default("handler"), "command", None)
        if fn is None:  # train: its options are the config's fields, mapped explicitly
            continue
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        assert not unmatched_options(fn, dests), name
        checked += 1
    assert checked >= 10
    # and the check bites: an option its function does not take is named
    assert unmatched_options(lambda *, n: None, {"n", "nn"}) == {"nn"}


def test_help_shows_defaults_and_no_doubled_percent(capsys):
    import pytest as _pytest

    with _pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "95%%" not in text and "(default: 256)" in text  # --batch-size


def test_an_interrupted_command_says_how_to_go_on_with_what_it_kept(teacher_run, tmp_path, monkeypatch,
                                                                    capsys):
    """Ctrl-C told every command to "continue with --resume", an option only `train` has: an interrupted
    evaluation names the folder its finished batches are in, and that the same command continues."""
    import agkd_bml.evaluation.runs as runs

    def interrupted(*_args, **_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "checked_evaluation", interrupted)
    out = tmp_path / "eval"
    assert main(["eval", teacher_run, "--attacks", "clean", "--n", "8", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"finished batches are saved in {out}/state (the same command continues)" in err
    assert "--resume" not in err
    assert main(["eval", teacher_run, "--attacks", "clean", "--n", "8"]) == 130
    assert "nothing was saved (with --out or --state" in capsys.readouterr().err
