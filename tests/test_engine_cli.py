"""The ``mudpt`` engine commands in subprocesses: kill-and-resume, sweep + report, error paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from test_engine_support import BACKBONE, learned_tensors, make_image_folder, run_cli, tiny_config

import mudpt
from mudpt.engine import TrainConfig, train

TRAIN_ARGS = ["--method", "mudpt", "--backbone", BACKBONE, "--shots", "4", "--epochs", "2", "--batch-size", "4",
              "--lr", "0.01", "--set", "warmup_epochs=0", "--set", "method_options.depth=2", "--device", "cpu",
              "--quiet"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


def _kill_when_logged(args: list[str], step: int, timeout: float = 300.0) -> int:
    """Run ``mudpt ARGS`` and SIGKILL it as soon as its metrics log shows global step ``step``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_engine_support import REPO

    metrics = Path(args[args.index("--output") + 1]) / "metrics.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "mudpt", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and f'"global_step": {step},' in metrics.read_text():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return process.wait()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(colours, tmp_path):
    from mudpt.cli import main

    # batch 1: 16 steps per epoch, so a kill seen at step 20 lands well inside the second epoch
    args = [a if a != "4" or i != TRAIN_ARGS.index("--batch-size") + 1 else "1" for i, a in enumerate(TRAIN_ARGS)]
    args = args + ["--dataset", str(colours)]
    reference = tmp_path / "reference"
    # The uninterrupted run and the restart run in this process (same command line, same code
    # path); only the run that gets killed needs its own process.
    assert main(["train", *args, "--output", str(reference)]) == 0

    killed = tmp_path / "killed"
    assert _kill_when_logged(["train", *args, "--output", str(killed)], step=20) == -9
    assert (killed / "checkpoint.pt").is_file() and not (killed / "results.json").exists()
    checkpoint = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 16
    logged = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]
    assert max(r["global_step"] for r in logged if r["kind"] == "step") >= 20  # steps after the checkpoint ran

    assert main(["train", *args, "--output", str(killed)]) == 0
    a, b = learned_tensors(reference), learned_tensors(killed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert ra["accuracy"] == rb["accuracy"] and ra["per_class_accuracy"] == rb["per_class_accuracy"]
    # The resumed log holds each step once, with the same losses as the uninterrupted run.
    steps = lambda run: [(r["global_step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                         if r["kind"] == "step"]
    assert steps(killed) == steps(reference)
    assert any(json.loads(x)["kind"] == "resume" for x in (killed / "metrics.jsonl").read_text().splitlines())


def test_cli_errors_are_one_paragraph_without_traceback(colours, tmp_path, capsys):
    from mudpt.cli import main

    cases = [
        (["train", "--method", "mudpt_plus", "--output", str(tmp_path / "a")], "Unknown method 'mudpt_plus'. Valid methods: " + ", ".join(mudpt.available_methods())),
        (["train", "--dataset", "oxford_petz", "--output", str(tmp_path / "b")], "Unknown dataset 'oxford_petz'"),
        (["train", "--set", "lerning_rate=1", "--output", str(tmp_path / "c")], "Unknown configuration key 'lerning_rate'"),
        (["train", "--set", "precision=fp8", "--output", str(tmp_path / "d")], "precision='fp8' must be one of 'fp32', 'bf16', 'fp16'"),
        (["train", "--config", "mudpt/vit_b99", "--output", str(tmp_path / "e")], "Shipped presets:"),
        (["train", "--method", "vpt", "--backbone", "test-rn-tiny", "--dataset", str(colours), "--output", str(tmp_path / "f")],
         "needs a ViT image tower"),
        (["train", "--method", "coop", "--backbone", "test-vit-tiny", "--dataset", str(colours), "--set",
          "method_options.n_kontext=4", "--output", str(tmp_path / "h")], "unknown option(s) ['n_kontext'] for method 'coop'"),
        (["eval", "--run", str(tmp_path / "missing")], "does not exist"),
        (["report", str(tmp_path / "missing")], "does not exist"),
        (["predict", "--run", str(tmp_path / "missing"), str(colours / "test" / "red" / "0.png")], "does not exist"),
        (["sweep", "--protocol", "fewshot", "--methods", "coop", "--datasets", "nope_ds", "--output", str(tmp_path / "s")],
         "Unknown dataset 'nope_ds'"),
        (["sweep", "--protocol", "fewshot", "--methods", "coop,zsclip", "--datasets", str(colours), "--set",
          "method_options.depth=2", "--output", str(tmp_path / "s")], "none of the sweep's methods (coop, zsclip) has an option 'depth'"),
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert needle in err, (args, err)
        error_lines = [line for line in err.splitlines() if line.startswith(f"mudpt {args[0]}: error: ")]
        assert len(error_lines) == 1 and needle in error_lines[0] and "Traceback" not in err
    # Runs that fail at set-up leave no folder behind to get in the way of the corrected command.
    assert not (tmp_path / "f").exists() and not (tmp_path / "h").exists()
    # The real command line exits with status 2 and no traceback too.
    done = run_cli(["train", "--method", "mudpt_plus", "--output", str(tmp_path / "g")])
    assert done.returncode == 2 and "Unknown method 'mudpt_plus'" in done.stderr and "Traceback" not in done.stderr


def test_cli_refuses_a_run_folder_of_another_method(colours, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(colours, run, method="coop", epochs=1), progress=False)
    done = run_cli(["train", *TRAIN_ARGS, "--dataset", str(colours), "--output", str(run)])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "method: folder has 'coop', this run wants 'mudpt'" in done.stderr and "--overwrite" in done.stderr


def test_sweep_then_report_via_cli(colours, tmp_path, capsys):
    from mudpt.cli import main

    def cli(args):
        code = main(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    out = tmp_path / "runs"
    common = ["--methods", "zsclip,coop", "--datasets", str(colours), "--seeds", "1,2", "--output", str(out),
              "--backbone", BACKBONE, "--epochs", "1", "--set", "warmup_epochs=0", "--set", "method_options.n_ctx=4",
              "--device", "cpu", "--quiet"]
    code, out_text, err = cli(["sweep", "--protocol", "fewshot", "--shots", "1,2", *common])
    assert code == 0, err
    assert "5 trained, 0 skipped" in out_text  # zsclip once + coop 2 shots x 2 seeds
    runs = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("results.json"))
    assert runs == ["fewshot/colours/coop/shots_1/seed_1", "fewshot/colours/coop/shots_1/seed_2",
                    "fewshot/colours/coop/shots_2/seed_1", "fewshot/colours/coop/shots_2/seed_2",
                    "fewshot/colours/zsclip/shots_0/seed_1"]
    # Restarting the same sweep trains nothing.
    code, out_text, _ = cli(["sweep", "--protocol", "fewshot", "--shots", "1,2", *common])
    assert code == 0 and "0 trained, 5 skipped" in out_text

    code, _, err = cli(["sweep", "--protocol", "base2new", "--shots", "2", *common[:4], "--seeds", "1", *common[6:]])
    assert code == 0, err
    new_eval = out / "base2new/colours/coop/shots_2/seed_1/evaluations"
    assert len(list(new_eval.glob("colours-*__new__test.json"))) == 1

    md = (out / "report.md").read_text()
    assert "## Few-shot recognition" in md and "## Base-to-new generalisation" in md
    coop_row = next(line for line in md.splitlines() if line.startswith("| colours | coop |"))
    assert coop_row.count("±") == 2  # 1-shot and 2-shot cells, mean ± std over 2 seeds
    rows = list(csv.DictReader((out / "report.csv").open()))
    fewshot = {(r["method"], r["shots"]): r for r in rows if r["protocol"] == "fewshot" and r["dataset"] == "colours"}
    assert set(fewshot) == {("zsclip", "0"), ("coop", "1"), ("coop", "2")}
    assert fewshot[("coop", "1")]["n_seeds"] == "2"
    accs = [json.loads((out / f"fewshot/colours/coop/shots_1/seed_{s}/results.json").read_text())["accuracy"] for s in (1, 2)]
    assert float(fewshot[("coop", "1")]["mean"]) == pytest.approx(sum(accs) / 2, abs=1e-3)
    b2n_cols = {r["column"] for r in rows if r["protocol"] == "base2new"}
    assert b2n_cols == {"base", "new", "hm"}
    for name in ("fewshot_colours.png", "fewshot_average.png", "base2new_colours.png", "base2new_average.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    rep = run_cli(["report", str(out), "--output", str(tmp_path / "rep")])
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "rep" / "report.md").read_text() == md and (tmp_path / "rep" / "fewshot_colours.png").is_file()


def test_cli_eval_and_predict(colours, tmp_path, capsys):
    from mudpt.cli import main

    run = tmp_path / "run"
    train(tiny_config(colours, run, method="coop", epochs=1, subsample="base"), progress=False)
    assert main(["eval", "--run", str(run), "--subsample", "new", "--json", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["subsample"] == "new" and metrics["n"] == 8
    done = run_cli(["predict", "--run", str(run), str(colours / "test" / "green" / "0.png"), "--topk", "2"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("0.png") and lines[1].strip().startswith("1. ") and lines[2].strip().startswith("2. ")


@pytest.mark.parametrize("given", ["", ",", " , "])
def test_predict_with_empty_classnames_is_refused_not_run_on_the_runs_own_classes(colours, tmp_path, capsys, given):
    from mudpt.cli import main

    run = tmp_path / "run"
    train(tiny_config(colours, run, method="coop", epochs=1), progress=False)
    image = str(colours / "test" / "green" / "0.png")
    assert main(["predict", "--run", str(run), image, "--classnames", given]) == 2
    err = capsys.readouterr().err
    assert "names no class" in err and "(command line: --classnames)" in err and "Traceback" not in err
    assert main(["predict", "--run", str(run), image, "--classnames", " green , red,"]) == 0
    out = capsys.readouterr().out
    assert "green" in out and "red" in out and "blue" not in out


def _commands(parser, names=()):
    """(command words, parser) of every command of the CLI."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield names, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, names + (name,))


ERROR_FIELDS = sorted({*TrainConfig.fields_where(), "overwrite", "run", "runs_dir", "classnames", "topk", "root",
                       "dataset", "method", "images", "subsample", "method_options.n_ctx"})


def test_every_hint_names_a_flag_of_the_command_that_prints_it():
    """A hint used to be looked up over every command: sweep suggested --overwrite (it has
    --rerun-changed), demo --method, report --set runs_dir."""
    from mudpt.cli import build_parser, flag_for

    checked = 0
    for names, parser in _commands(build_parser()):
        flags = {option for action in parser._actions for option in action.option_strings}
        for field in ERROR_FIELDS:
            hint = flag_for(parser, field)
            if hint is not None:
                assert hint.split()[0] in flags, (names, field, hint)
                if hint.startswith("--set "):  # only for what --set can set
                    assert field.startswith("method_options.") or field in TrainConfig.option_names(), hint
                checked += 1
    assert checked > 50
    parser = build_parser()
    from mudpt.cli import command_parser

    assert flag_for(command_parser(parser, ["sweep"]), "overwrite") == "--rerun-changed"
    assert flag_for(command_parser(parser, ["train"]), "overwrite") == "--overwrite"
    assert flag_for(command_parser(parser, ["demo"]), "method") is None
    assert flag_for(command_parser(parser, ["report"]), "runs_dir") is None
    assert flag_for(command_parser(parser, ["train"]), "run") is None  # train has no --run
    assert flag_for(command_parser(parser, ["train"]), "method_options.n_ctx") == "--set method_options.n_ctx=..."


def test_bad_batch_sizes_urls_and_a_run_folder_for_load_learned(colours, tmp_path, capsys):
    from mudpt.cli import main

    run = tmp_path / "run"
    train(tiny_config(colours, run, method="coop", epochs=1), progress=False)
    assert main(["eval", "--run", str(run), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "batch_size=0 must be an integer of at least 1" in err and "(command line: --batch-size)" in err
    assert main(["predict", "--run", str(run), "https://example.com/cat.jpg"]) == 2
    err = capsys.readouterr().err
    assert "is a URL" in err and "Traceback" not in err
    # the run folder itself, the natural guess, loads its learned state
    method = mudpt.load_learned(run)
    reference = mudpt.load_learned(run / "learned")
    images = torch.zeros(1, 3, method.clip.image_size, method.clip.image_size)
    with torch.no_grad():
        assert torch.equal(method(images), reference(images))


def test_a_path_of_the_wrong_kind_is_named_as_such_not_as_missing(colours, tmp_path, capsys):
    from mudpt.cli import main

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    cases = [(["eval", "--run", str(a_file)], "is a file, not a folder"),
             (["report", str(a_file)], "is a file, not a folder"),
             (["predict", "--run", str(tmp_path), str(colours / "test")], "is a folder, not a file")]
    for args, expected in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and "does not exist" not in err, (args, err)
    with pytest.raises(mudpt.UserError, match="is a folder, not a file"):
        mudpt.load_clip("test-vit-tiny", pretrained=str(tmp_path))


def test_train_quiet_still_prints_its_result_line(colours, tmp_path, capsys):
    from mudpt.cli import main

    args = ["train", "--dataset", str(colours), "--output", str(tmp_path / "run"), *TRAIN_ARGS[:2], "--backbone",
            BACKBONE, "--shots", "2", "--epochs", "1", "--set", "method_options.depth=2", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["run_dir"] == str(tmp_path / "run") and 0 <= result["accuracy"] <= 100
