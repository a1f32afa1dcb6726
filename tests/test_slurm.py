"""SLURM end to end on a real cluster on this machine (slurm/local_cluster.sh: slurmctld, slurmd, munged).

A requeued sbatch job resumes and ends with the masks of an uninterrupted run (after ``scontrol requeue``,
and after SIGUSR1 through Lightning's auto-requeue); a Hydra sweep goes through the submitit launcher as a
job array; the multi-node DDP template runs 2 srun tasks on CPU (gloo); a Ray cluster starts inside a job
and serves a driver; the GPU and multi-node templates pass ``sbatch --test-only`` on the cluster's
declared (never started) GPU nodes.

The session fixture starts a cluster of its own (own state dir and ports, stopped at teardown), installing
slurm-wlm and munge with apt-get when they are missing; it skips only where that cannot work (not root,
no apt-get, apt failing). Jobs run this venv's ``sparse-train`` on small data, one CPU each.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sparse_lightning import CNN1d, Classifier, attach_masks_from_state_dict, mask_digest
from sparse_lightning.resources import config_dir
from sparse_lightning.wandb_offline import _records, read_history

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "slurm"
BIN = Path(sys.executable).parent
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}
SMALL = ["data.num_samples=1000", "sparsity.at_epoch=1", "logger=csv", "callbacks.progress=null",
         "+trainer.enable_model_summary=false"]
# Requeue runs: 30 short epochs, so there is training left after the first checkpoint. save_top_k=1 makes
# ModelCheckpoint write last.ckpt every epoch (with the repo's save_top_k=0, Lightning writes it only at the end).
REQUEUE_RUN = [*SMALL, "trainer.max_epochs=30", "callbacks.checkpoint.save_top_k=1"]
SHORT_RUN = [*SMALL, "trainer.max_epochs=2"]


def _free_port_pair() -> int:
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", 0))
                port = a.getsockname()[1]
                b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


class Cluster:
    """Clients of the test cluster: sbatch/scontrol/scancel with its SLURM_CONF, and job bookkeeping."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf

    @property
    def env(self) -> dict[str, str]:
        # Built per call: each test's own WANDB_* dirs (conftest) reach its jobs. No SLURM_* job variables
        # of an outer allocation, should pytest itself run inside one.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(SLURM_CONF=str(self.conf), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
        return env

    def run(self, *cmd: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {out.returncode}: {out.stderr.strip()}")
        return out

    def sbatch(self, *args: str | Path, cwd: Path) -> str:
        return self.run("sbatch", "--parsable", *map(str, args), cwd=cwd).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        line = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job_id: str, timeout_s: float = 420, log: Path | None = None) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while (info := self.job(job_id))["JobState"] not in FINAL_STATES:
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                raise AssertionError(f"job {job_id} still {info['JobState']} after {timeout_s} s{_tail(log)}")
            time.sleep(0.5)
        return info

    def wait_for_file(self, path: Path, job_id: str, log: Path, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if self.job(job_id)["JobState"] in FINAL_STATES or time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} ended or timed out before writing {path}{_tail(log)}")
            time.sleep(0.05)

    def signal_training(self, job_id: str, sig: signal.Signals) -> list[int]:
        """Signal the processes of the job's step 0 (the srun'ed sparse-train) directly; return their pids."""
        rows = [line.split() for line in self.run("scontrol", "listpids", job_id).stdout.splitlines()[1:]]
        pids = [int(row[0]) for row in rows if len(row) >= 3 and row[2] == "0"]
        assert pids, f"job {job_id} has no step 0 processes"
        for pid in pids:
            os.kill(pid, sig)
        return pids

    def time_limit_within_warning(self, job_id: str) -> str:
        """Cut the job's time limit to 61-120 s from now and return the old one. slurmctld sends the
        ``--signal=SIGUSR1@90`` warning once the time left is <= 90 s + its 30 s check interval, so at its
        next time-limit check (<= 30 s), well before the new limit."""
        info = self.job(job_id)
        minutes = (_seconds(info["RunTime"]) + 120) // 60  # whole minutes: SLURM's time limit unit
        self.run("scontrol", "update", f"jobid={job_id}", f"TimeLimit={minutes}")
        return info["TimeLimit"]

    def wait_requeued(self, job_id: str, pids: list[int], timeout_s: float = 120) -> None:
        """Wait until the job is PENDING again and its first attempt's processes are gone."""
        deadline = time.monotonic() + timeout_s
        while self.job(job_id)["JobState"] != "PENDING" or any(Path(f"/proc/{pid}").exists() for pid in pids):
            assert time.monotonic() < deadline, f"job {job_id} was not requeued (state {self.job(job_id)['JobState']})"
            time.sleep(0.1)

    def release(self, job_id: str, timeout_s: float = 60) -> None:
        """Start a requeued job now instead of after SLURM's requeue hold (BeginTime = now + 121 s)."""
        deadline = time.monotonic() + timeout_s
        while (state := self.job(job_id)["JobState"]) != "PENDING":
            assert time.monotonic() < deadline, f"job {job_id} was not requeued (state {state})"
            time.sleep(0.1)
        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")


def _seconds(slurm_time: str) -> int:
    """``[days-]HH:MM:SS`` (scontrol's RunTime) in seconds."""
    days, _, hms = slurm_time.rpartition("-")
    hours, minutes, seconds = map(int, hms.split(":"))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def _tail(log: Path | None, chars: int = 3000) -> str:
    return f"\n--- {log} ---\n{log.read_text()[-chars:]}" if log and log.exists() else ""


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def _masks(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith("_mask")}


def _pruned_fraction(ckpt: Path) -> float:
    masks = _masks(ckpt).values()
    return sum(int((~m).sum()) for m in masks) / sum(m.numel() for m in masks)


def _mask_digest(ckpt: Path) -> str:
    """mask_digest of the model a sparse-train checkpoint holds (default model: the 1-D CNN on MNIST-1D)."""
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    model = Classifier(CNN1d(input_shape=(1, 40), num_classes=10))
    attach_masks_from_state_dict(model, state)
    model.load_state_dict(state)
    return mask_digest(model)


def _weights_equal(ckpt: Path, reference: Path) -> bool:
    """Whether two checkpoints hold bit-identical model states (weights, masks and buffers)."""
    state, ref = (torch.load(p, weights_only=True)["state_dict"] for p in (ckpt, reference))
    return state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)


@pytest.fixture(scope="session")
def slurm(data_cache):
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs slurmctld, slurmd and munged as root")
    state_dir = Path(tempfile.mkdtemp(prefix="sparse_lightning_slurm_", dir="/tmp"))
    env = dict(os.environ, SPARSE_SLURM_DIR=str(state_dir), SPARSE_SLURM_PORT=str(_free_port_pair()))
    script = TEMPLATES / "local_cluster.sh"
    start = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=900)
    if start.returncode == 3:  # no root, no apt-get, or apt failed: the cluster cannot exist here
        pytest.skip(f"no local SLURM cluster: {start.stderr.strip()}")
    assert start.returncode == 0, start.stderr
    try:
        yield Cluster(state_dir / "etc" / "slurm.conf")
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(state_dir, ignore_errors=True)


def _train_job(slurm: Cluster, cwd: Path, *overrides: str) -> tuple[str, Path, Path]:
    """Submit slurm/train.sbatch on 1 CPU; return the job id, its run dir and its log."""
    job = slurm.sbatch("--cpus-per-task=1", "--mem=2G", TEMPLATES / "train.sbatch", *overrides, cwd=cwd)
    return job, cwd / "outputs" / "slurm" / job, cwd / f"slurm-sparse-train-{job}.out"


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    """The reference: the same run as the requeued ones, never interrupted. Submitted at once, awaited on use;
    returns its final checkpoint."""
    job, run_dir, log = _train_job(slurm, tmp_path_factory.mktemp("uninterrupted"), *REQUEUE_RUN)

    @functools.cache
    def last_ckpt() -> Path:
        info = slurm.wait(job, log=log)
        assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "0"), _tail(log)
        return run_dir / "checkpoints" / "last.ckpt"

    return last_ckpt


@pytest.mark.slurm
@pytest.mark.slow
def test_scontrol_requeue_mid_run_resumes_with_the_masks_and_weights_of_an_uninterrupted_run(slurm, uninterrupted, tmp_path):
    job, run_dir, log = _train_job(slurm, tmp_path, *REQUEUE_RUN)
    slurm.wait_for_file(run_dir / "checkpoints" / "last.ckpt", job, log)
    # Freeze the trainer at its first checkpoint, so the requeue lands mid-run however fast this machine is.
    # SLURM's requeue wakes it with SIGCONT + SIGTERM (SIGKILL after KillWait) and Lightning stops at the next
    # batch end, so it cannot finish the run.
    pids = slurm.signal_training(job, signal.SIGSTOP)
    slurm.run("scontrol", "requeue", job)
    slurm.wait_requeued(job, pids)
    slurm.release(job)
    info = slurm.wait(job, log=log)

    text = log.read_text()
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), _tail(log)
    assert f"job {job} attempt 2 in {run_dir} ckpt_path={run_dir}/checkpoints/last.ckpt" in text  # SLURM_RESTART_COUNT=1
    assert f"Restored all states from the checkpoint at {run_dir}/checkpoints/last.ckpt" in text
    assert text.count("final: test/acc=") == 1, "the first attempt must not have finished"
    assert _mask_digest(run_dir / "checkpoints" / "last.ckpt") == _mask_digest(uninterrupted())
    # Resumed at an epoch boundary, with the data order a function of (seed, epoch): the same weights too.
    assert _weights_equal(run_dir / "checkpoints" / "last.ckpt", uninterrupted())


@pytest.mark.slurm
@pytest.mark.slow
def test_sigusr1_saves_hpc_checkpoint_requeues_and_resumes_with_the_same_masks(slurm, uninterrupted, tmp_path):
    """The time-limit path as users get it: slurmctld sends train.sbatch's ``--signal=SIGUSR1@90`` warning ->
    Lightning saves hpc_ckpt_1.ckpt and requeues -> the next attempt resumes from the newest checkpoint."""
    job, run_dir, log = _train_job(slurm, tmp_path, *REQUEUE_RUN)
    slurm.wait_for_file(run_dir / "checkpoints" / "last.ckpt", job, log)  # fit runs: Lightning's handlers are set
    # Frozen mid-run, it cannot finish before the warning, however slow SLURM or this machine is. SLURM sends
    # SIGCONT with the warning signal, so nothing here resumes it.
    pids = slurm.signal_training(job, signal.SIGSTOP)
    time_limit = slurm.time_limit_within_warning(job)
    slurm.wait_requeued(job, pids)
    slurm.run("scontrol", "update", f"jobid={job}", f"TimeLimit={time_limit}")  # attempt 2 gets no warning
    # Lightning's handler saves hpc_ckpt_1.ckpt and runs `scontrol requeue`, but the job trains on until the
    # requeue's SIGTERM arrives: an epoch may end meanwhile and write a newer last.ckpt. Attempt 2 restores
    # the newer of the two (train.resume_path), so the test names it now, before attempt 2 can write.
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), _tail(log)
    newest = max(hpc, run_dir / "checkpoints" / "last.ckpt", key=lambda p: p.stat().st_mtime_ns)
    slurm.release(job)
    info = slurm.wait(job, log=log)

    text = log.read_text()
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), _tail(log)
    assert f"Handling auto-requeue signal: {int(signal.SIGUSR1)}" in text
    assert f"Requeued SLURM job: {job}" in text
    assert f"job {job} attempt 2 in {run_dir} \n" in text  # no ckpt_path from the template: hpc_ckpt_1 exists
    assert f"Restored all states from the checkpoint at {newest}" in text
    assert text.count("final: test/acc=") == 1, "the first attempt must not have finished"
    # Masks only: hpc_ckpt_1 is saved where the signal lands, usually mid-epoch, and Lightning cannot resume a
    # plain DataLoader mid-epoch exactly.
    assert _mask_digest(run_dir / "checkpoints" / "last.ckpt") == _mask_digest(uninterrupted())


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_goes_to_slurm_as_a_job_array_through_the_submitit_launcher(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    argv = [str(BIN / "sparse-train"), "-m", "sparsity.target=0.5,0.7", "hydra/launcher=slurm",
            "hydra.launcher.mem_gb=1", f"hydra.sweep.dir={sweep}", *SHORT_RUN]
    out = subprocess.run(argv, env=slurm.env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-1%2" in script.read_text()
    assert "#SBATCH --signal=USR1@90" in script.read_text()  # Lightning's requeue signal, not submitit's USR2
    array_id = script.parent.name
    for num, target in enumerate((0.5, 0.7)):
        assert _pruned_fraction(sweep / str(num) / "checkpoints" / "last.ckpt") == pytest.approx(target, abs=1e-3)
        job_err = (sweep / ".submitit" / f"{array_id}_{num}" / f"{array_id}_{num}_0_log.err").read_text()
        assert "SLURM auto-requeueing enabled" in job_err  # Lightning runs with its SLURM environment


@pytest.mark.slurm
@pytest.mark.slow
def test_multi_node_template_runs_two_srun_tasks_as_ddp_on_cpu(slurm, tmp_path):
    """slurm/ddp_multi_node.sbatch on the one CPU node: 2 tasks, gloo; wandb (offline) groups by job id."""
    job = slurm.sbatch("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G",
                       TEMPLATES / "ddp_multi_node.sbatch", "trainer.accelerator=cpu", *SHORT_RUN, "logger=wandb",
                       cwd=tmp_path)
    log = tmp_path / f"slurm-sparse-train-ddp-{job}.out"
    info = slurm.wait(job, log=log)

    text = log.read_text()
    assert info["JobState"] == "COMPLETED", _tail(log)
    assert "1 nodes x 2 tasks" in text
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in text
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert "distributed_backend=gloo" in text
    run_dir = tmp_path / "outputs" / "slurm" / job
    assert _pruned_fraction(run_dir / "checkpoints" / "last.ckpt") == pytest.approx(0.9, abs=1e-3)
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")  # rank 0 only
    assert any("test/acc" in row for row in read_history(wandb_run))
    (run_record,) = [r.run for r in _records(next(wandb_run.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run"]
    assert (run_record.run_group, run_record.job_type) == (job, job)


@pytest.mark.slurm
@pytest.mark.slow
def test_ray_cluster_starts_in_a_job_and_serves_the_driver(slurm, tmp_path):
    probe = tmp_path / "driver.py"
    probe.write_text(
        "import sys, ray\n"
        "address = next(a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('tune.address='))\n"
        "ray.init(address=address, logging_level='ERROR')\n"
        "square = ray.remote(lambda x: x * x)\n"
        "print('driver:', address, ray.get(square.remote(7)), int(ray.cluster_resources()['CPU']), sys.argv[1:])\n"
    )
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    env = dict(slurm.env, RAY_PORT=str(_free_port_pair()), RAY_TEMP_DIR=str(ray_tmp),
               SPARSE_TUNE=f"{sys.executable} {probe}", RAY_AUTH_MODE="disabled")
    try:
        out = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                              "--mem=4G", str(TEMPLATES / "ray_cluster.sbatch"), "tune.num_samples=2"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        job = out.stdout.strip()
        log = tmp_path / f"slurm-sparse-tune-{job}.out"
        info = slurm.wait(job, log=log)
        text = log.read_text()
        assert info["JobState"] == "COMPLETED", _tail(log)
        assert "ray: 1 of 1 nodes alive" in text
        assert re.search(rf"driver: \S+:{env['RAY_PORT']} 49 2 \['tune.address=\S+', 'tune.num_samples=2'\]", text), text
        time.sleep(1)
        assert not _processes_mentioning(str(ray_tmp)), "Ray processes outlived the job"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slurm
@pytest.mark.parametrize("template, nodes", [("train", "gpu[12]"), ("ddp_single_node", "gpu[12]"),
                                             ("ddp_multi_node", r"gpu\[1-2\]"), ("ray_cluster", r"gpu\[1-2\]")])
def test_templates_fit_the_declared_gpu_nodes(slurm, template, nodes, tmp_path):
    out = slurm.run("sbatch", "--test-only", "--partition=gpu", str(TEMPLATES / f"{template}.sbatch"), cwd=tmp_path)
    assert re.search(rf"Job \d+ to start at \S+ using \d+ processors on nodes {nodes} in partition gpu", out.stderr), out.stderr


@pytest.mark.slurm
def test_test_only_refuses_what_the_cluster_cannot_hold(slurm, tmp_path):
    for extra in (["--nodes=3"], ["--gpus-per-node=8", "--ntasks-per-node=8"]):
        out = slurm.run("sbatch", "--test-only", "--partition=gpu", *extra, str(TEMPLATES / "ddp_multi_node.sbatch"),
                        cwd=tmp_path, check=False)
        assert out.returncode != 0 and "Requested node configuration is not available" in out.stderr, out.stderr


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_wandb_mode_comes_from_the_environment(mode, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", mode)
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        logger = compose("train", ["logger=wandb", "output_dir=out"]).logger
    assert (logger.mode, logger.group, logger.job_type, logger.get("offline", False)) == (mode, None, "train", False)


def test_slurm_output_dir_is_keyed_on_the_job_id(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", ["hydra/output=slurm"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/slurm/42"


def test_wandb_groups_by_slurm_array_and_job(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        logger = compose("train", ["logger=wandb", "output_dir=out"]).logger
    assert (logger.mode, logger.group, logger.job_type) == ("offline", "40", "42")
