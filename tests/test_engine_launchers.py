"""Sweeps on launchers: local worker processes, Slurm through submitit's local executor (real
subprocesses), failures collected, Ctrl-C and a rerun that continues, experiment trackers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_engine_support import BACKBONE, REPO, learned_tensors, make_image_folder

from mudpt.core.errors import ConfigError
from mudpt.engine.launchers import SlurmOptions, device_slots, parse_time_minutes

TINY = {"epochs": 1, "batch_size": 4, "lr": 0.01, "warmup_epochs": 0, "device": "cpu", "precision": "fp32",
        "method_options.n_ctx": 2, "eval_batch_size": 50}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


def _sweep(output, colours, **kwargs):
    from mudpt.engine.sweep import sweep

    kwargs.setdefault("methods", ["coop", "mudpt"])
    kwargs.setdefault("seeds", [1, 2])
    overrides = {**TINY, **kwargs.pop("overrides", {})}
    if "mudpt" in kwargs["methods"]:
        overrides["method_options.depth"] = 2
    return sweep("fewshot", datasets=kwargs.pop("datasets", [str(colours)]), shots=[2], output=output,
                 backbone=BACKBONE, overrides=overrides, progress=False, log=lambda _: None, **kwargs)


def _epoch_lines(run_dir) -> int:
    return sum(1 for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "epoch")


def test_device_slots_deal_gpus_round_robin_and_split_cpu_cores():
    assert [s["gpus"] for s in device_slots(2, 2, n_gpus=4, n_cpus=16)] == [[0, 1], [2, 3]]
    assert [s["gpus"] for s in device_slots(3, 1, n_gpus=2, n_cpus=12)] == [[0], [1], [0]]
    assert [s["threads"] for s in device_slots(3, 1, n_gpus=0, n_cpus=8)] == [2, 2, 2]
    assert device_slots(4, 1, n_gpus=0, n_cpus=2)[0] == {"gpus": None, "threads": 1}
    with pytest.raises(ConfigError, match="gpus_per_run=2 needs that many GPUs; 0 visible"):
        device_slots(2, 2, n_gpus=0)
    with pytest.raises(ConfigError, match="workers=0"):
        device_slots(0)
    assert parse_time_minutes("04:00:00") == 240 and parse_time_minutes("1-00:30:00") == 1470
    assert parse_time_minutes("90") == 90 and parse_time_minutes(15) == 15 and parse_time_minutes("01:30") == 2
    with pytest.raises(ConfigError, match="not a Slurm time"):
        parse_time_minutes("soon")


def test_two_workers_train_every_run_once_and_equal_one_process(colours, tmp_path):
    one = _sweep(tmp_path / "one", colours)
    two = _sweep(tmp_path / "two", colours, workers=2)
    assert one["trained"] == two["trained"] == 4 and not two["failed"]
    assert sorted(r.status for r in two["results"]) == ["trained"] * 4
    assert {r.where for r in two["results"]} == {"worker 0 (1 CPU threads)", "worker 1 (1 CPU threads)"}
    for a, b in zip(one["runs"], two["runs"]):
        assert _epoch_lines(b) == 1  # trained exactly once
        first, second = learned_tensors(a), learned_tensors(b)
        assert all(torch.allclose(first[k], second[k], atol=1e-5) for k in first), (a, b)
    assert two["report"]["markdown"].is_file()
    again = _sweep(tmp_path / "two", colours, workers=2)  # finished runs are skipped, as inline
    assert again["trained"] == 0 and again["skipped"] == 4


def test_worker_failures_are_collected_and_the_other_runs_finish(colours, tmp_path):
    broken = make_image_folder(tmp_path / "broken")
    for image in (broken / "train").rglob("*.png"):
        image.write_bytes(b"not a png")
    result = _sweep(tmp_path / "runs", colours, datasets=[str(colours), str(broken)], methods=["coop"], seeds=[1],
                    workers=2)
    assert result["trained"] == 1 and len(result["failed"]) == 1
    assert "broken" in result["failed"][0] and "CorruptImageError" in result["failed"][0]


def test_a_second_sweep_on_the_same_folder_never_trains_a_run_twice(colours, tmp_path):
    from mudpt.engine.runs import RunLock

    plan_dir = tmp_path / "runs" / "fewshot" / "colours" / "coop" / "shots_2" / "seed_1"
    with RunLock(plan_dir):  # another process is training that run
        result = _sweep(tmp_path / "runs", colours, methods=["coop"], seeds=[1, 2], workers=2)
    assert result["busy"] == [str(plan_dir)] and result["trained"] == 1 and not result["failed"]


def _wait_for(proc, path: Path, text: str, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().count(text) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early: {path.read_text() if path.is_file() else ''}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {count} x {text!r}")


def _two_worker_sweep(colours, tmp_path, seeds: str, epochs: int) -> list[str]:
    """The command line of a few-shot CoOp sweep with 2 local workers (the interruption tests)."""
    return [sys.executable, "-m", "mudpt", "sweep", "--protocol", "fewshot", "--methods", "coop", "--datasets",
            str(colours), "--shots", "2", "--seeds", seeds, "--output", str(tmp_path / "runs"), "--backbone",
            BACKBONE, "--epochs", str(epochs), "--batch-size", "2", "--lr", "0.01", "--device", "cpu", "--set",
            "warmup_epochs=0", "--workers", "2", "--quiet", "--no-report"]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_the_same_command_continues(colours, tmp_path):
    args = _two_worker_sweep(colours, tmp_path, "1,2,3", epochs=40) + ["--set", "method_options.n_ctx=2"]
    log = tmp_path / "sweep.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        # A shell without job control starts background jobs with SIGINT ignored, which Python would
        # inherit (and then never raise KeyboardInterrupt): give the sweep the terminal's default.
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait_for(proc, log, "training ->", 2)
        deadline = time.monotonic() + 120
        runs_dir = tmp_path / "runs" / "fewshot" / "colours" / "coop" / "shots_2"
        while not list(runs_dir.glob("seed_*/checkpoint.pt")) and time.monotonic() < deadline:
            time.sleep(0.1)  # until a worker has finished an epoch
        assert proc.poll() is None, "the sweep ended before Ctrl-C could interrupt it"
        proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the sweep (the parent forwards it to the workers)
        assert proc.wait(timeout=120) == 130
    assert "interrupted (rerun the same command to resume)" in log.read_text()
    runs = sorted((tmp_path / "runs" / "fewshot" / "colours" / "coop" / "shots_2").glob("seed_*"))
    assert runs and not all((r / "results.json").is_file() for r in runs)
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted((tmp_path / "runs" / "fewshot" / "colours" / "coop" / "shots_2").glob("seed_*"))
    assert len(runs) == 3 and all((r / "results.json").is_file() for r in runs)
    assert all(_epoch_lines(r) == 40 for r in runs)  # resumed, each epoch logged once


@pytest.mark.slow
def test_sigterm_stops_the_workers_as_ctrl_c_does(colours, tmp_path):
    """What Slurm and schedulers send: the launcher used to die at once (exit 143) while its
    workers trained on, detached."""
    args = _two_worker_sweep(colours, tmp_path, "1,2", epochs=200)
    log = tmp_path / "sweep.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait_for(proc, log, "training ->", 2)
        workers = _children(proc.pid)
        assert len(workers) >= 2, "the workers must be running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "a worker outlived the sweep"
    assert "stopping the workers" in log.read_text()
    runs = sorted((tmp_path / "runs" / "fewshot" / "colours" / "coop" / "shots_2").glob("seed_*"))
    assert not any((r / "results.json").is_file() for r in runs)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"  # a zombie has exited


@pytest.mark.slow
def test_slurm_launcher_through_submitits_local_executor(colours, tmp_path):
    pytest.importorskip("submitit")
    options = SlurmOptions(cluster="local", time="00:10:00", cpus_per_run=1, partition="gpu", account="lab",
                           sbatch={"qos": "high"})
    result = _sweep(tmp_path / "runs", colours, methods=["coop"], seeds=[1, 2], launcher="slurm", slurm=options)
    assert result["trained"] == 2 and not result["failed"] and result["report"]["markdown"].is_file()
    ledger = [json.loads(line) for line in (tmp_path / "runs" / ".mudpt-sweep" / "jobs.jsonl").read_text().splitlines()]
    assert sorted(r["run_dir"] for r in ledger) == sorted(result["runs"])
    for record in ledger:
        assert record["job_id"] and Path(record["stdout"]).is_file() and record["cluster"] == "local"
        assert "training ->" in Path(record["stdout"]).read_text()  # the run's log lines, in the job's log
    assert all(_epoch_lines(run) == 1 for run in result["runs"])
    again = _sweep(tmp_path / "runs", colours, methods=["coop"], seeds=[1, 2], launcher="slurm", slurm=options)
    assert again["skipped"] == 2 and again["trained"] == 0  # nothing resubmitted
    assert len((tmp_path / "runs" / ".mudpt-sweep" / "jobs.jsonl").read_text().splitlines()) == 2


def test_slurm_off_a_cluster_is_a_clear_error(colours, tmp_path):
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine is a Slurm node")
    with pytest.raises(ConfigError, match="cannot submit from this machine: .*srun.*cluster='local'"):
        _sweep(tmp_path / "runs", colours, methods=["coop"], seeds=[1], launcher="slurm", slurm=SlurmOptions())


# ---------------------------------------------------------------------------------------------
# Experiment trackers
# ---------------------------------------------------------------------------------------------
class _FakeSummaryWriter:
    tags: list = []

    def __init__(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "events.out.fake").write_text("")

    def add_scalar(self, tag, value, step):
        _FakeSummaryWriter.tags.append(tag)

    def flush(self):
        pass

    def close(self):
        pass


def test_wandb_offline_and_tensorboard_get_the_same_metric_names(colours, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import types

    from mudpt.engine.runs import read_run_record
    from mudpt.engine.trainer import train
    from test_engine_support import tiny_config

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=_FakeSummaryWriter))
    _FakeSummaryWriter.tags = []
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(colours, tmp_path / "run", method="kgcoop", tensorboard=True, wandb="mudpt-test",
                      wandb_group="sweep-a", epochs=2)
    train(cfg, progress=False, quiet=True)
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1
    data = offline[0].read_bytes()
    names = set(_FakeSummaryWriter.tags)
    assert {"step/loss", "step/accuracy", "step/lr", "step/loss_ce", "step/loss_kg", "epoch/loss",
            "test/accuracy", "test/macro_f1"} <= names
    for name in names:  # every scalar TensorBoard got, W&B got under the same name
        assert name.encode() in data, name
    assert b"mudpt-test" in data and b"sweep-a" in data
    manifest = read_run_record(tmp_path / "run")["files"]
    assert "wandb_run_id" in manifest and any(f.startswith("wandb/offline-run-") for f in manifest)
    run_id = (tmp_path / "run" / "wandb_run_id").read_text()
    assert run_id.encode() in data  # one mudpt run = one W&B run, resumable under its id


def test_trackers_missing_packages_are_clear_errors(colours, tmp_path, monkeypatch):
    from mudpt.engine.trainer import train
    from test_engine_support import tiny_config

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="wandb='p' needs the wandb package"):
        train(tiny_config(colours, tmp_path / "run", wandb="p"), progress=False, quiet=True)


@pytest.mark.slow
def test_a_run_on_k_gpus_trains_through_torchrun_as_a_single_run_does(colours, tmp_path):
    """--gpus-per-run K: the worker trains the run under torchrun with K processes (here on CPU
    with gloo, as the DDP test does); the result equals one process's."""
    from mudpt.engine.launchers import RunTask, run_task
    from mudpt.engine.trainer import train
    from test_engine_support import tiny_config

    single = train(tiny_config(colours, tmp_path / "single", method="coop", shots=4, epochs=2), progress=False,
                   quiet=True)
    cfg = tiny_config(colours, tmp_path / "ddp", method="coop", shots=4, epochs=2)
    task = RunTask(1, 1, "[1/1]", {"run_dir": str(tmp_path / "ddp"), "targets": [], "dataset": str(colours)},
                   cfg.to_dict())
    result = run_task(task, log=lambda _: None, ddp_gpus=2, sweep_dir=tmp_path)
    assert result.status == "trained", result.error
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["world_size"] == 2
    a, b = learned_tensors(single.run_dir), learned_tensors(tmp_path / "ddp")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert list((tmp_path / ".mudpt-sweep" / "configs").glob("*.yaml"))  # the config torchrun was given


def test_wandb_online_without_a_key_is_a_clear_error_that_says_what_to_do(colours, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # W&B keeps its settings per process: another test's offline mode must not answer
    from mudpt.engine.trainer import train
    from test_engine_support import tiny_config

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(colours, tmp_path / "run", wandb="mudpt-test", epochs=1)
    with pytest.raises(ConfigError, match=r"could not start the online run.*wandb login.*WANDB_MODE=offline"):
        train(cfg, progress=False, quiet=True)
