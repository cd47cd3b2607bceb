"""Where a sweep's runs execute: this process, N local worker processes, or Slurm jobs.

A sweep is a list of :class:`RunTask` (one per run folder: train it unless it is finished with
the same identity, then its evaluations: base-to-new's new classes, the cross-dataset targets,
the domain shifts, always after the training they need). A launcher executes them:

* :class:`InlineLauncher` (``launcher="local"``, ``workers=1``): one after another in this
  process, as before.
* :class:`LocalLauncher` (``workers=N``): N worker processes on this machine, each pinned to its
  own GPU(s), round-robin over the visible devices (``gpus_per_run=K`` gives each worker K
  GPUs and trains its runs with ``torchrun`` / DDP); on CPU the cores are split between the
  workers. A task queue hands every run to exactly one worker; a run folder another process
  holds (a second sweep command on the same folder) is reported busy, not trained twice.
  Failures are collected and listed at the end; Ctrl-C stops the workers (the last epoch's
  checkpoint of every interrupted run stays) and the same command continues.
* :class:`SlurmLauncher`: one Slurm job per run through submitit (an array job), with the
  partition, account, time, GPUs and CPUs per run, array parallelism and extra ``sbatch``
  options given; job ids and log paths go to ``<output>/.mudpt-sweep/jobs.jsonl``. Jobs are
  checkpointable: on preemption or timeout submitit requeues them and the run resumes from its
  last epoch. Rerunning the command skips finished runs and runs whose job is still queued or
  running, and submits the others again. ``cluster="local"`` runs the same jobs with
  submitit's local executor (real subprocesses: how the tests check this path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from mudpt.core.errors import ConfigError, RunInUseError, UserError

__all__ = ["InlineLauncher", "LocalLauncher", "RunTask", "SlurmLauncher", "SlurmOptions", "SweepInterrupted",
           "TaskResult", "device_slots", "make_launcher", "run_task"]

SWEEP_DIR = ".mudpt-sweep"  # the sweep's own files: the job ledger, configs handed to torchrun


@dataclass
class RunTask:
    """One run of a sweep: its plan entry (``run_dir``, ``targets``, ...) and its full config."""

    number: int
    total: int
    label: str
    entry: dict
    config: dict
    on_mismatch: str = "error"


@dataclass
class TaskResult:
    """What became of a task: ``status`` is ``trained``, ``skipped`` (finished with the same
    identity), ``busy`` (another process holds the folder), ``queued`` (its Slurm job is still
    pending or running) or ``failed`` (``error`` says why)."""

    number: int
    run_dir: str
    status: str
    error: str = ""
    seconds: float = 0.0
    where: str = ""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: the results of the runs that ended before it."""

    def __init__(self, results: Sequence[TaskResult]):
        super().__init__()
        self.results = list(results)


# ---------------------------------------------------------------------- one run


def _evaluation_is_current(path: Path, dataset: str, root, subsample: str, precision: str, device: str) -> bool:
    """An evaluation file of the same evaluated data (content and sample) and precision."""
    import mudpt.data
    from mudpt.engine.evaluation import effective_precision, resolve_device

    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    current = mudpt.data.load_dataset(dataset, root=root, subsample=subsample).fingerprint
    used, _ = effective_precision(precision, resolve_device(device))
    return saved.get("data_fingerprint") == current and saved.get("precision") == used and "accuracy" in saved


def train_and_evaluate(task: RunTask, progress: bool = False, log: Callable[[str], None] = print,
                       ddp_gpus: int = 1, sweep_dir: Optional[Path] = None) -> bool:
    """Train a task's run (unless finished with the same identity) and its evaluations; True
    when it trained. With ``ddp_gpus > 1`` the training runs under ``torchrun`` on that many
    local GPUs."""
    from mudpt.engine.config import TrainConfig
    from mudpt.engine.evaluation import evaluate, evaluation_key
    from mudpt.engine.runs import is_finished
    from mudpt.engine.trainer import train

    cfg = TrainConfig.from_dict(task.config)
    entry, label = task.entry, task.label
    from mudpt.methods import get_method_class

    verb = "training" if get_method_class(cfg.method).learns_from_data else "evaluation (learns nothing from data)"
    was_finished = is_finished(entry["run_dir"])
    if not was_finished:
        log(f"{label}: {verb} -> {entry['run_dir']}")
    if ddp_gpus > 1 and not was_finished:
        _train_with_torchrun(cfg, ddp_gpus, sweep_dir or Path(entry["run_dir"]).parent, task.on_mismatch)
        trained = True
    else:
        result = train(cfg, progress=progress, on_mismatch=task.on_mismatch, quiet=not progress)
        trained = result.status != "finished"
    if not trained:
        log(f"{label}: done (same settings), skipped")
    for target in entry["targets"]:
        dataset_name, subsample = (entry["dataset"], "new") if target == "new" else (target, "all")
        path = Path(entry["run_dir"]) / "evaluations" / f"{evaluation_key(dataset_name, subsample, 'test')}.json"
        if not trained and path.is_file() and _evaluation_is_current(path, dataset_name, cfg.root, subsample,
                                                                     cfg.precision, cfg.device):
            continue
        log(f"{label}: evaluating on {dataset_name} ({subsample})")
        evaluate(entry["run_dir"], dataset=dataset_name, root=cfg.root, subsample=subsample,
                 batch_size=cfg.eval_batch_size, precision=cfg.precision, progress=progress,
                 device=cfg.device, num_workers=cfg.num_workers)
    return trained


def _train_with_torchrun(cfg, gpus: int, sweep_dir: Path, on_mismatch: str) -> None:
    """``torchrun --standalone --nproc_per_node gpus -m mudpt train --config <the run's config>``."""
    import hashlib

    import yaml

    from mudpt.core.files import atomic_write_text

    data = cfg.to_dict()
    if on_mismatch == "overwrite":
        data["overwrite"] = True
    text = yaml.safe_dump(data, sort_keys=True)
    path = Path(sweep_dir) / SWEEP_DIR / "configs" / f"{hashlib.sha1(text.encode()).hexdigest()[:16]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "mudpt", "train", "--config", str(path), "--quiet"]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"torchrun on {gpus} GPUs exited with status {completed.returncode}:\n{tail}")


def run_task(task: RunTask, progress: bool = False, log: Callable[[str], None] = print, ddp_gpus: int = 1,
             sweep_dir: Optional[Path] = None, where: str = "") -> TaskResult:
    """:func:`train_and_evaluate` as a :class:`TaskResult`: every failure is caught and
    described (a user error by its message, a bug with its traceback)."""
    start = time.perf_counter()
    result = TaskResult(task.number, str(task.entry["run_dir"]), "failed", where=where)
    try:
        result.status = "trained" if train_and_evaluate(task, progress, log, ddp_gpus, sweep_dir) else "skipped"
    except RunInUseError as err:
        result.status, result.error = "busy", str(err)
    except UserError as err:
        result.error = f"{type(err).__name__}: {err}"
    except Exception:  # noqa: BLE001 - a worker reports every failure and goes on
        result.error = traceback.format_exc()
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------- launchers


class InlineLauncher:
    """Every run in this process, one after another (``keep_going=False``: the first failure
    raises, with its traceback)."""

    def __init__(self, keep_going: bool = False, progress: bool = True):
        self.keep_going, self.progress = keep_going, progress

    def run(self, tasks: Sequence[RunTask], log: Callable[[str], None]) -> list[TaskResult]:
        results = []
        try:
            for task in tasks:
                if not self.keep_going:
                    start = time.perf_counter()
                    trained = train_and_evaluate(task, self.progress, log)
                    results.append(TaskResult(task.number, str(task.entry["run_dir"]),
                                              "trained" if trained else "skipped",
                                              seconds=time.perf_counter() - start))
                    continue
                result = run_task(task, self.progress, log)
                if result.status == "failed":
                    log(f"{task.label}: FAILED ({result.error.strip().splitlines()[-1]}); continuing (--keep-going)")
                results.append(result)
        except KeyboardInterrupt:
            raise SweepInterrupted(results) from None
        return results


def device_slots(workers: int, gpus_per_run: int = 1, n_gpus: Optional[int] = None,
                 n_cpus: Optional[int] = None) -> list[dict]:
    """Per worker: ``{"gpus": [ids] or None, "threads": n}``. GPUs are dealt round-robin
    (worker ``w`` gets ``w*K .. w*K+K-1`` modulo the visible count); the CPU cores are split
    evenly between the workers (at least one thread each)."""
    if workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1", field="workers")
    if gpus_per_run < 1:
        raise ConfigError(f"gpus_per_run={gpus_per_run} must be at least 1", field="gpus_per_run")
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n_cpus = n_cpus or os.cpu_count() or 1
    if gpus_per_run > 1 and gpus_per_run > max(n_gpus, 0):
        raise ConfigError(f"gpus_per_run={gpus_per_run} needs that many GPUs; {n_gpus} visible", field="gpus_per_run")
    threads = max(1, n_cpus // workers)
    if not n_gpus:
        return [{"gpus": None, "threads": threads} for _ in range(workers)]
    return [{"gpus": [(w * gpus_per_run + j) % n_gpus for j in range(gpus_per_run)], "threads": threads}
            for w in range(workers)]


def _worker_main(worker_id: int, slot: dict, tasks, messages, sweep_dir: str) -> None:
    """A worker process: pinned to its devices, it runs tasks from the queue until the sentinel."""
    gpus = slot["gpus"]
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    os.environ["OMP_NUM_THREADS"] = str(slot["threads"])  # for torchrun's processes
    import torch

    torch.set_num_threads(slot["threads"])
    where = f"worker {worker_id}" + (f" (GPU {','.join(str(g) for g in gpus)})" if gpus is not None else
                                     f" ({slot['threads']} CPU threads)")

    def log(text: str) -> None:
        messages.put(("log", f"[{where}] {text}"))

    try:
        while True:
            task = tasks.get()
            if task is None:
                break
            if gpus is not None and str(task.config.get("device", "auto")).startswith("cuda"):
                task = dataclasses.replace(task, config={**task.config, "device": "cuda"})  # its own GPU
            messages.put(("start", (worker_id, task.number)))
            messages.put(("result", run_task(task, False, log, ddp_gpus=len(gpus) if gpus else 1,
                                             sweep_dir=Path(sweep_dir), where=where)))
    except KeyboardInterrupt:
        pass  # the launcher reports what finished; the interrupted run resumes from its checkpoint


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the block runs, SIGTERM raises KeyboardInterrupt (in the main thread, where Python
    delivers signals; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LocalLauncher:
    """``workers`` processes on this machine (see the module docstring)."""

    def __init__(self, workers: int = 2, gpus_per_run: int = 1, sweep_dir: Optional[Path] = None,
                 stop_timeout: float = 60.0):
        self.workers, self.gpus_per_run = workers, gpus_per_run
        self.sweep_dir = Path(sweep_dir) if sweep_dir is not None else Path(".")
        self.stop_timeout = stop_timeout

    def run(self, tasks: Sequence[RunTask], log: Callable[[str], None]) -> list[TaskResult]:
        import multiprocessing

        slots = device_slots(self.workers, self.gpus_per_run)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: CUDA is set up per worker
        task_queue, messages = context.Queue(), context.Queue()
        for task in tasks:
            task_queue.put(task)
        workers = min(self.workers, max(len(tasks), 1))
        for _ in range(workers):
            task_queue.put(None)
        log(f"local launcher: {workers} worker(s): " + "; ".join(
            f"worker {i}: " + (f"GPU {','.join(map(str, s['gpus']))}" if s["gpus"] is not None
                               else f"{s['threads']} CPU thread(s)") for i, s in enumerate(slots[:workers])))

        def start(i: int):
            process = context.Process(target=_worker_main, args=(i, slots[i], task_queue, messages,
                                                                 str(self.sweep_dir)), name=f"mudpt-worker-{i}")
            process.start()
            return process

        processes = {i: start(i) for i in range(workers)}
        running: dict[int, int] = {}  # worker -> task number
        by_number = {task.number: task for task in tasks}
        results: dict[int, TaskResult] = {}
        # SIGTERM (what Slurm and schedulers send) stops the workers as Ctrl-C does: without this
        # the launcher died at once and its workers trained on, detached
        with _sigterm_as_interrupt():
            return self._collect(messages, processes, running, by_number, results, tasks, log, start)

    def _collect(self, messages, processes, running, by_number, results, tasks, log,
                 start) -> list[TaskResult]:
        try:
            while len(results) < len(tasks):
                try:
                    kind, payload = messages.get(timeout=0.5)
                except queue.Empty:
                    if not self._reap(processes, running, by_number, results, log, start):
                        break
                    continue
                if kind == "log":
                    log(payload)
                elif kind == "start":
                    running[payload[0]] = payload[1]
                elif kind == "result":
                    results[payload.number] = payload
                    running = {w: n for w, n in running.items() if n != payload.number}
                    if payload.status == "failed":
                        log(f"{by_number[payload.number].label}: FAILED on {payload.where} "
                            f"({payload.error.strip().splitlines()[-1]}); the other runs go on")
        except KeyboardInterrupt:
            self._stop(processes, log)
            raise SweepInterrupted(sorted(results.values(), key=lambda r: r.number)) from None
        for process in processes.values():
            process.join(timeout=self.stop_timeout)
        for number, task in by_number.items():  # tasks no worker could take (every worker died)
            results.setdefault(number, TaskResult(number, str(task.entry["run_dir"]), "failed",
                                                  "not run: no worker was left to run it"))
        return [results[n] for n in sorted(results)]

    def _reap(self, processes, running, by_number, results, log, start) -> bool:
        """Replace workers that died (killed, out of memory): their run is failed, the queue goes
        on. False when no worker is left alive and nothing can come any more."""
        for i, process in list(processes.items()):
            if process.is_alive() or process.exitcode == 0:
                continue
            number = running.pop(i, None)
            if number is not None and number not in results:
                results[number] = TaskResult(number, str(by_number[number].entry["run_dir"]), "failed",
                                             f"worker {i} died (exit code {process.exitcode}) during this run")
                log(f"{by_number[number].label}: FAILED (worker {i} died, exit code {process.exitcode})")
            if len(results) < len(by_number):
                processes[i] = start(i)
            else:
                del processes[i]
        return any(p.is_alive() for p in processes.values())

    def _stop(self, processes, log) -> None:
        log("stopping the workers (the interrupted runs keep their last checkpoint) ...")
        for process in processes.values():
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.stop_timeout
        for process in processes.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


# ---------------------------------------------------------------------- Slurm


def parse_time_minutes(value) -> int:
    """Slurm's time formats (``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``D-HH``) or minutes as a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(1, int(value))
    text = str(value).strip()
    try:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        if "-" in text:  # D-HH, D-HH:MM, D-HH:MM:SS
            parts += [0] * (3 - len(parts))
            hours, minutes, seconds = parts
        elif len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts
        total = int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    except ValueError:
        raise ConfigError(f"time={value!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)",
                          field="time") from None
    if total < 1:
        raise ConfigError(f"time={value!r} must be at least a minute", field="time")
    return total


@dataclass
class SlurmOptions:
    """The Slurm resources of one run's job (``sbatch`` spellings in the comments)."""

    partition: Optional[str] = None  # --partition
    account: Optional[str] = None  # --account
    time: str = "04:00:00"  # --time, per run
    gpus_per_run: int = 1  # --gpus-per-node; > 1 trains the run with torchrun
    cpus_per_run: int = 8  # --cpus-per-task
    mem_gb: Optional[int] = None  # --mem
    array_parallelism: int = 64  # --array=...%N
    sbatch: dict = field(default_factory=dict)  # any other sbatch option, e.g. {"qos": "high"}
    cluster: str = "slurm"  # "local": submitit's local executor (subprocesses on this machine)
    wait: bool = True  # wait for the jobs and report; False: submit and return


class SlurmLauncher:
    """One Slurm job per run through submitit (see the module docstring)."""

    def __init__(self, options: SlurmOptions, sweep_dir: Path):
        self.options, self.sweep_dir = options, Path(sweep_dir)
        if options.cluster not in ("slurm", "local"):
            raise ConfigError(f"cluster={options.cluster!r} must be 'slurm' or 'local'", field="submitit_cluster")

    def _gpus(self) -> int:
        """GPUs per job: the option's; 0 for local jobs on a machine without CUDA."""
        if self.options.cluster == "local":
            import torch

            return self.options.gpus_per_run if torch.cuda.is_available() else 0
        return self.options.gpus_per_run

    @property
    def ledger(self) -> Path:
        return self.sweep_dir / SWEEP_DIR / "jobs.jsonl"

    def _executor(self):
        try:
            import submitit
        except ImportError:
            raise ConfigError("launcher='slurm' needs submitit (pip install submitit)", field="launcher") from None
        o = self.options
        try:
            executor = submitit.AutoExecutor(folder=str(self.sweep_dir / SWEEP_DIR / "jobs" / "%j"),
                                             cluster=o.cluster)
        except RuntimeError as err:  # submitit's "Could not detect srun" off a Slurm cluster
            raise ConfigError(f"launcher='slurm' cannot submit from this machine: {err} Run the sweep on a Slurm "
                              "login node, or use submitit's local executor (cluster='local') to run the same jobs "
                              "here.", field="launcher") from None
        params = {"name": "mudpt", "timeout_min": parse_time_minutes(o.time), "cpus_per_task": o.cpus_per_run,
                  "tasks_per_node": 1, "nodes": 1}
        gpus = self._gpus()
        if gpus:
            params["gpus_per_node"] = gpus
        if o.mem_gb:
            params["mem_gb"] = o.mem_gb
        if o.cluster == "slurm":
            params.update(slurm_array_parallelism=o.array_parallelism,
                          slurm_additional_parameters=dict(o.sbatch))
            if o.partition:
                params["slurm_partition"] = o.partition
            if o.account:
                params["slurm_account"] = o.account
        executor.update_parameters(**params)
        return executor

    def _recorded_jobs(self) -> dict:
        """run folder -> its latest recorded job."""
        jobs = {}
        if self.ledger.is_file():
            for line in self.ledger.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                jobs[record["run_dir"]] = record
        return jobs

    def _still_queued(self, record: dict) -> bool:
        if record.get("cluster") != "slurm":
            return False  # local jobs end with the command that started them
        import submitit

        state = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"]).state
        return state.upper() in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                                 "SUSPENDED")

    def run(self, tasks: Sequence[RunTask], log: Callable[[str], None]) -> list[TaskResult]:
        from mudpt.core.files import atomic_write_text
        from mudpt.engine.runs import is_finished

        recorded = self._recorded_jobs()
        results, to_submit = [], []
        for task in tasks:
            record = recorded.get(str(task.entry["run_dir"]))
            if _looks_done(task):
                log(f"{task.label}: done (same settings), skipped")
                results.append(TaskResult(task.number, str(task.entry["run_dir"]), "skipped"))
            elif record and not is_finished(task.entry["run_dir"]) and self._still_queued(record):
                log(f"{task.label}: still queued or running as Slurm job {record['job_id']}; not submitted again")
                results.append(TaskResult(task.number, str(task.entry["run_dir"]), "queued", where=record["job_id"]))
            else:
                to_submit.append(task)
        if not to_submit:
            return results
        executor = self._executor()
        import submitit

        try:
            jobs = executor.map_array(_checkpointable_runner(str(self.sweep_dir), max(self._gpus(), 1)), to_submit)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as err:
            # sbatch's refusal (partition, account, limits) is the user's to fix; anything else is a bug
            raise ConfigError(f"Slurm refused the sweep's jobs: {err}".strip(), field="launcher") from None
        lines = self.ledger.read_text().splitlines() if self.ledger.is_file() else []
        for job, task in zip(jobs, to_submit):
            lines.append(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "run_dir": str(task.entry["run_dir"]),
                                     "label": task.label, "job_id": str(job.job_id), "cluster": self.options.cluster,
                                     "folder": str(job.paths.folder), "stdout": str(job.paths.stdout),
                                     "stderr": str(job.paths.stderr)}))
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.ledger, "".join(line + "\n" for line in lines))
        log(f"slurm launcher: {len(jobs)} job(s) submitted ({jobs[0].job_id.split('_')[0]} ...); ids and logs in "
            f"{self.ledger}")
        if not self.options.wait:
            results += [TaskResult(t.number, str(t.entry["run_dir"]), "queued", where=str(j.job_id))
                        for j, t in zip(jobs, to_submit)]
            return results
        for job, task in zip(jobs, to_submit):
            try:
                result = job.result()
            except Exception as err:  # noqa: BLE001 - a job's failure is reported with its log
                result = TaskResult(task.number, str(task.entry["run_dir"]), "failed",
                                    f"job {job.job_id} failed ({type(err).__name__}); its log: {job.paths.stderr}")
            result.where = f"job {job.job_id}"
            log(f"{task.label}: {result.status} (job {job.job_id})")
            results.append(result)
        return sorted(results, key=lambda r: r.number)


def _looks_done(task: RunTask) -> bool:
    """Finished with the same settings and every evaluation of the task written: nothing to
    submit. (The job itself compares the full identity, data and weights included; this check in
    the submitting process compares the parts known without reading the data, and only avoids a
    job that would find nothing to do.)"""
    from mudpt.engine.evaluation import evaluation_key
    from mudpt.engine.identity import RunIdentity
    from mudpt.engine.runs import is_finished, read_results

    run_dir = Path(task.entry["run_dir"])
    if not is_finished(run_dir):
        return False
    try:
        saved = RunIdentity.of_results(read_results(run_dir))
    except (UserError, KeyError, TypeError):
        return False
    if saved.diff(RunIdentity.of_config(task.config), parts=("config",)):
        return False
    for target in task.entry["targets"]:
        dataset, subsample = (task.entry["dataset"], "new") if target == "new" else (target, "all")
        if not (run_dir / "evaluations" / f"{evaluation_key(dataset, subsample, 'test')}.json").is_file():
            return False
    return True


def _checkpointable_runner(sweep_dir: str, gpus: int):
    """A submitit callable whose ``checkpoint`` requeues the job with the same task on
    preemption or timeout (the run resumes from its last epoch's checkpoint)."""
    import submitit

    class MudptRun(submitit.helpers.Checkpointable):
        def __call__(self, task: RunTask) -> TaskResult:
            return run_task(task, False, print, ddp_gpus=gpus, sweep_dir=Path(sweep_dir),
                            where=os.environ.get("SLURM_JOB_ID", "local job"))

    return MudptRun()


def make_launcher(launcher: str = "local", workers: int = 1, gpus_per_run: int = 1, keep_going: bool = False,
                  progress: bool = True, slurm: Optional[SlurmOptions] = None, sweep_dir: Path = Path(".")):
    """The launcher a sweep request names."""
    if launcher == "local":
        if workers == 1 and gpus_per_run == 1:
            return InlineLauncher(keep_going=keep_going, progress=progress)
        return LocalLauncher(workers=workers, gpus_per_run=gpus_per_run, sweep_dir=sweep_dir)
    if launcher == "slurm":
        options = slurm or SlurmOptions()
        if gpus_per_run != 1 and options.gpus_per_run == 1:
            options = dataclasses.replace(options, gpus_per_run=gpus_per_run)
        return SlurmLauncher(options, sweep_dir)
    raise ConfigError(f"launcher={launcher!r} must be 'local' or 'slurm'", field="launcher")
