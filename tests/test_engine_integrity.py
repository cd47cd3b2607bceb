"""Run integrity: no number mudpt prints may come from another run, another config or an
untrained model. Each test reproduces a way a wrong number used to come out with exit status 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from test_engine_support import REPO, make_image_folder, run_cli, tiny_config

from mudpt.core.errors import ConfigError, MissingFileError, RunFolderError
from mudpt.engine import evaluate, predict, report, sweep, train


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


QUIET = dict(progress=False, log=lambda _: None)
TINY = {"warmup_epochs": 0, "device": "cpu", "method_options.n_ctx": 4}


# ---------------------------------------------------------------------------------------------
# 1. sweeps skip only a run of the same identity
# ---------------------------------------------------------------------------------------------
def test_sweep_refuses_a_finished_run_of_other_settings_and_reruns_it_on_request(colours, tmp_path):
    common = dict(datasets=[str(colours)], shots=[2], seeds=[1], output=tmp_path / "sw", backbone="test-vit-tiny", **QUIET)
    first = sweep("base2new", ["coop"], overrides={**TINY, "epochs": 1}, **common)
    assert first["trained"] == 1
    again = sweep("base2new", ["coop"], overrides={**TINY, "epochs": 1}, **common)
    assert again["trained"] == 0 and again["skipped"] == 1  # the same settings: skipped
    with pytest.raises(RunFolderError) as info:
        sweep("base2new", ["coop"], overrides={**TINY, "epochs": 2, "lr": 0.05}, **common)
    message = str(info.value)
    assert "config.epochs: folder has 1, this run wants 2" in message and "config.lr" in message
    rerun = sweep("base2new", ["coop"], overrides={**TINY, "epochs": 2, "lr": 0.05}, on_mismatch="overwrite", **common)
    assert rerun["trained"] == 1
    run = tmp_path / "sw" / "base2new" / "colours" / "coop" / "shots_2" / "seed_1"
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["epochs"] == 2 and results["config"]["lr"] == 0.05
    evaluation = json.loads(next((run / "evaluations").glob("colours-*__new__test.json")).read_text())
    assert evaluation["accuracy"] == evaluate(run, subsample="new", progress=False, save=False)["accuracy"]


def test_datasets_sharing_a_folder_name_never_share_runs(tmp_path):
    a = make_image_folder(tmp_path / "a" / "photos")
    b = make_image_folder(tmp_path / "b" / "photos", colours={"purple": (150, 30, 160), "grey": (128, 128, 128)})
    out = tmp_path / "runs"
    result = sweep("fewshot", ["zsclip"], datasets=[str(a), str(b)], seeds=[1], output=out, backbone="test-vit-tiny",
                   overrides={"device": "cpu"}, **QUIET)
    assert result["trained"] == 2 and len(set(result["runs"])) == 2
    # The same folder name in two sweeps into one output: the second is refused, not skipped.
    sweep("fewshot", ["zsclip"], datasets=[str(a)], seeds=[1], output=tmp_path / "one", backbone="test-vit-tiny",
          overrides={"device": "cpu"}, **QUIET)
    with pytest.raises(RunFolderError, match="data.location"):
        sweep("fewshot", ["zsclip"], datasets=[str(b)], seeds=[1], output=tmp_path / "one", backbone="test-vit-tiny",
              overrides={"device": "cpu"}, **QUIET)


def test_changed_data_or_weights_make_another_run(colours, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(colours, data)
    cfg = tiny_config(data, tmp_path / "run", method="coop", epochs=1)
    train(cfg, progress=False)
    (data / "test" / "red" / "0.png").unlink()  # the dataset's content changed
    with pytest.raises(RunFolderError, match="data.content"):
        train(cfg, progress=False)
    weights = tmp_path / "tiny.pt"
    import mudpt

    torch.save(mudpt.load_clip("test-vit-tiny").model.state_dict(), weights)
    cfg = tiny_config(colours, tmp_path / "w", method="coop", epochs=1, pretrained=str(weights))
    train(cfg, progress=False)
    state = torch.load(weights)
    state["logit_scale"] += 1
    torch.save(state, weights)  # same path, other weights
    with pytest.raises(RunFolderError, match="weights: folder has 'sha256:"):
        train(cfg, progress=False)


# ---------------------------------------------------------------------------------------------
# 2. report pools only runs of one setting
# ---------------------------------------------------------------------------------------------
def test_report_rows_are_settings_and_duplicate_seeds_count_once(colours, tmp_path):
    runs = tmp_path / "runs"
    train(tiny_config(colours, runs / "x", method="coop", epochs=1), progress=False)  # a quick run beside a sweep
    sweep("fewshot", ["coop", "zsclip"], datasets=[str(colours)], shots=[2], seeds=[1], output=runs,
          backbone="test-vit-tiny", overrides={**TINY, "epochs": 2}, **QUIET)
    train(tiny_config(colours, runs / "rn_zero_shot", method="zsclip", backbone="test-rn-tiny", shots=0,
                      method_options={}), progress=False)
    shutil.copytree(runs / "x", runs / "copy_of_x")  # the same run twice: one seed, not two
    paths = report(runs)
    md = paths["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| colours |")]
    coop = [line for line in rows if line.startswith("| colours | coop [")]
    assert len(coop) == 2 and any("epochs=1" in line for line in coop) and any("epochs=2" in line for line in coop)
    zero_shot = [line for line in rows if line.startswith("| colours | zsclip [")]
    assert len(zero_shot) == 2 and all("backbone=test-" in line and "lr=" not in line for line in zero_shot)
    assert not any("±" in line for line in rows)  # no row pooled two runs
    assert any("same setting and seed 1" in w and "copy_of_x" in w for w in paths["warnings"])
    assert "## Warnings" in md


def test_report_skips_unreadable_and_incomplete_results_with_a_warning(colours, tmp_path):
    train(tiny_config(colours, tmp_path / "good", method="coop", epochs=1), progress=False)
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "results.json").write_text('{"accuracy": 5')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.json").write_text('{"config": {}}')
    paths = report(tmp_path, plots=False)
    assert paths["n_runs"] == 1
    assert any("torn" in w and "unreadable" in w for w in paths["warnings"])
    assert any("empty" in w and "no accuracy" in w for w in paths["warnings"])


# ---------------------------------------------------------------------------------------------
# 3. a run without its learned state is an error, not an untrained model
# ---------------------------------------------------------------------------------------------
def test_missing_or_partial_learned_state_is_an_error(colours, tmp_path, capsys):
    from mudpt.cli import main

    run = train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1), progress=False).run_dir
    (run / "learned.json").unlink()
    with pytest.raises(MissingFileError, match=r"no final learned state: .*learned\.json missing"):
        evaluate(run, progress=False)
    image = colours / "test" / "red" / "0.png"
    with pytest.raises(MissingFileError, match="learned.json"):
        predict(run, [image])
    assert main(["eval", "--run", str(run), "--quiet"]) == 2
    assert "learned.json missing" in capsys.readouterr().err
    other = train(tiny_config(colours, tmp_path / "other", method="coop", epochs=1), progress=False).run_dir
    (other / "learned.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"learned\.safetensors missing"):
        evaluate(other, progress=False)


# ---------------------------------------------------------------------------------------------
# 4. one writer per run folder
# ---------------------------------------------------------------------------------------------
HOLD = ("import sys, time; from mudpt.engine.runs import RunLock\n"
        "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")


def test_a_second_writer_is_refused_with_the_holders_pid_and_kill_9_frees_the_lock(colours, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid} "):
            train(tiny_config(colours, run, method="coop", epochs=1), progress=False)
        assert not (run / "config.json").exists()
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock with the process
        holder.wait()
    assert train(tiny_config(colours, run, method="coop", epochs=1), progress=False).status == "trained"


def test_a_train_of_a_folder_another_process_holds_is_refused_and_changes_nothing(colours, tmp_path):
    """Deterministic: a helper holds the folder's lock (as a training process would) while the
    same command runs again through the CLI; nothing in the folder changes, and once the holder
    is gone the command finds its run and every step is logged once."""
    run = tmp_path / "race"
    args = ["train", "--method", "coop", "--dataset", str(colours), "--backbone", "test-vit-tiny", "--shots", "4",
            "--epochs", "2", "--batch-size", "4", "--set", "warmup_epochs=0", "--device", "cpu", "--quiet",
            "--output", str(run)]
    assert run_cli(args).returncode == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = run_cli(args)
        assert second.returncode == 2 and f"in use by process {holder.pid}" in second.stderr
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == before
    finally:
        holder.kill()
        holder.wait()
    third = run_cli(args)
    assert third.returncode == 0, third.stderr
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert [s["global_step"] for s in steps] == list(range(1, 2 * 4 + 1))  # 16 images / batch 4, 2 epochs, once each


# ---------------------------------------------------------------------------------------------
# 5. overwrite replaces the run's own files only
# ---------------------------------------------------------------------------------------------
def test_overwrite_keeps_the_users_files(colours, tmp_path):
    run = train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1, subsample="base"),
                progress=False).run_dir
    evaluate(run, subsample="new", progress=False)
    (run / "evaluations" / "my_notes.txt").write_text("mine")
    (run / "README.md").write_text("mine too")
    record = json.loads((run / "run.json").read_text())
    assert any(f.startswith("evaluations/colours-") and f.endswith("__new__test.json") for f in record["files"])
    assert "log.txt" in record["files"]
    train(tiny_config(colours, run, method="mudpt", epochs=1, subsample="base", overwrite=True,
                      method_options={"n_ctx": 2, "depth": 2}), progress=False)
    assert (run / "evaluations" / "my_notes.txt").read_text() == "mine" and (run / "README.md").is_file()
    assert not list((run / "evaluations").glob("colours-*__new__test.json"))  # the old run's evaluation
    assert json.loads((run / "config.json").read_text())["method"] == "mudpt"


# ---------------------------------------------------------------------------------------------
# 6., 7. precision per device; settings that would train nothing
# ---------------------------------------------------------------------------------------------
def test_fp16_on_cpu_runs_fp32_and_says_so(colours, tmp_path, capsys):
    result = train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1, precision="fp16"))
    assert result.metrics["precision_used"] == "fp32" and result.metrics["config"]["precision"] == "fp16"
    assert any("fp16" in n and "fp32 on this CPU" in n for n in result.metrics["notes"])
    assert capsys.readouterr().err.count("runs as fp32 on this CPU") == 1
    assert "fp32 on this CPU" in (result.run_dir / "log.txt").read_text()


def test_a_one_epoch_run_still_trains_and_lr_0_is_refused(colours, tmp_path):
    cfg = tiny_config(colours, tmp_path / "one", method="coop", epochs=1, warmup_epochs=1, lr=0.01)
    result = train(cfg, progress=False)
    lrs = {json.loads(x)["lr"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in x}
    assert lrs == {0.01}  # not only the warm-up's 1e-5
    assert any("warm-up shortened from 1 to 0" in n for n in result.metrics["notes"])
    with pytest.raises(ConfigError, match="lr=0 trains nothing"):
        train(tiny_config(colours, tmp_path / "zero", method="coop", lr=0.0), progress=False)


def test_new_classes_of_a_run_trained_on_all_classes_are_refused(colours, tmp_path):
    run = train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1), progress=False).run_dir
    with pytest.raises(ConfigError, match="trained on all classes .* classes it trained on"):
        evaluate(run, subsample="new", progress=False)


# ---------------------------------------------------------------------------------------------
# 8., 9. inputs checked before work starts; smaller paths
# ---------------------------------------------------------------------------------------------
def test_missing_tensorboard_and_empty_test_split_fail_before_training(colours, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="tensorboard=True needs the tensorboard package"):
        train(tiny_config(colours, tmp_path / "tb", method="coop", tensorboard=True), progress=False)
    assert not (tmp_path / "tb" / "metrics.jsonl").exists()
    monkeypatch.setattr(builtins, "__import__", real_import)

    only_train = tmp_path / "only_train"
    shutil.copytree(colours / "train", only_train / "train")
    with pytest.raises(ConfigError, match="has no test images"):
        train(tiny_config(only_train, tmp_path / "notest", method="coop"), progress=False)
    assert not (tmp_path / "notest").exists()


def test_nan_before_the_first_checkpoint_does_not_claim_one(colours, tmp_path, monkeypatch):
    import torch.nn.functional as F

    from mudpt.core.errors import TrainingDivergedError

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, labels: real(logits, labels) * float("nan"))
    with pytest.raises(TrainingDivergedError, match="No epoch had completed, so no checkpoint exists"):
        train(tiny_config(colours, tmp_path / "run", method="coop"), progress=False)


def test_device_without_gpu_is_a_clear_error(colours, tmp_path, capsys):
    from mudpt.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--method", "coop", "--dataset", str(colours), "--backbone", "test-vit-tiny",
                 "--device", "cuda:1", "--output", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda:1' was asked for but no CUDA GPU is visible" in err and "Traceback" not in err


def test_run_files_get_the_users_umask(colours, tmp_path):
    run = train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1), progress=False).run_dir
    mask = os.umask(0)
    os.umask(mask)
    modes = {name: (run / name).stat().st_mode & 0o777 for name in
             ("results.json", "metrics.jsonl", "config.json", "learned.json", "learned.safetensors", "log.txt")}
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_log_txt_and_a_finished_rerun_that_says_it_skipped(colours, tmp_path, capsys):
    cfg = tiny_config(colours, tmp_path / "run", method="coop", epochs=2)
    first = train(cfg)
    log = (first.run_dir / "log.txt").read_text()
    assert "config: {" in log and "data: " in log and "epoch 1: loss" in log and "epoch 2: loss" in log
    assert f"test: accuracy {first.metrics['accuracy']:.2f}%" in log and "timings:" in log
    capsys.readouterr()
    again = train(cfg)
    assert again.status == "finished" and again.metrics["accuracy"] == first.metrics["accuracy"]
    assert "training skipped" in capsys.readouterr().out


def test_version_help_and_ignored_demo_output():
    import argparse

    from mudpt import __version__
    from mudpt.cli import _all_parsers, build_parser

    done = run_cli(["--version"])
    assert done.returncode == 0 and done.stdout.strip() == f"mudpt {__version__}"
    for parser in _all_parsers(build_parser()):
        if parser.prog != "mudpt":
            assert parser.description, f"{parser.prog} has no description"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
        text = parser.format_help()
        for line in text.split("\n  -")[1:]:  # one option's help: its default said once at most
            assert " ".join(line.split()).count("(default") <= 1, f"{parser.prog}: {line}"
        assert "(default: None)" not in " ".join(text.split()) and "(default: False)" not in text
    assert "mudpt-demo/" in (REPO / ".gitignore").read_text().split()


def test_unwritable_places_are_clear_errors_and_a_read_only_run_still_evaluates(colours, tmp_path, monkeypatch,
                                                                                 capsys):
    import errno

    from mudpt.cli import main
    from mudpt.core import files
    from mudpt.core.errors import UnwritableError

    run = tmp_path / "run"
    train(tiny_config(colours, run, epochs=1), progress=False)
    # --output naming an existing file: train and report
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(UnwritableError, match=r"cannot write the run folder .*a_file/run.*a file is in the way"):
        train(tiny_config(colours, blocker / "run", epochs=1), progress=False)
    assert main(["report", str(tmp_path), "--output", str(blocker)]) == 2
    assert "a file is in the way of a folder" in capsys.readouterr().err and blocker.read_text() == "mine"

    # a finished run on a read-only share: the lock cannot be created read-write, the record not written
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(files.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    metrics = evaluate(run, subsample="all")
    assert metrics["accuracy"] >= 0 and "the evaluation was not saved: cannot write" in metrics["notes"][-1]
    assert "read-only file system" in metrics["notes"][-1]
    monkeypatch.undo()

    # the disk fills while a checkpoint is written: a clear error, the previous file intact
    checkpoint = tmp_path / "ck.bin"
    files.atomic_write_bytes(checkpoint, b"previous")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UnwritableError, match=r"the disk is full; free space .*intact"):
        files.atomic_write(checkpoint, full)
    assert checkpoint.read_bytes() == b"previous" and len(list(tmp_path.glob(".ck.bin.*"))) == 0


def test_a_report_of_runs_on_a_read_only_share_says_to_write_it_elsewhere(colours, tmp_path, monkeypatch, capsys):
    import errno

    from mudpt.cli import main
    from mudpt.core import files

    run = tmp_path / "runs" / "run"
    train(tiny_config(colours, run, epochs=1), progress=False)
    real = files.tempfile.mkstemp

    def read_only(**kwargs):
        if str(kwargs.get("dir", "")).startswith(str(tmp_path / "runs")):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(**kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and "(command line: --output)" in err
    assert main(["report", str(tmp_path / "runs"), "--no-plots", "--output", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()
