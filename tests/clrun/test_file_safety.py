"""The files clcore writes and reads stay safe under faults: modes, full disks, kills, planted files."""

from __future__ import annotations

import errno
import io
import os
import pickle
import socket
import stat
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from clcore.algorithms.tak.fisher_cache import cache_file, load_or_compute_factors
from clcore.algorithms.tak.heads import SavedClassifier
from clcore.algorithms.tak.task_vector_files import read_task_vector
from clcore.clrun.checkpoint import CheckpointError, read_checkpoint
from clcore.clrun.resume import resume_plan
from clcore.clta import protocol
from clcore.clta.task_data import TaskData
from clcore.utils import atomic
from clcore.utils.atomic import DiskFullError, remove_stale_temporaries
from tests.helpers import RunsCode

REPO = Path(__file__).resolve().parents[2]

WRITERS = {
    "text": (atomic.write_text_atomic, "new text\n" * 100),
    "json": (atomic.write_json_atomic, {"new": list(range(100))}),
    "torch": (atomic.torch_save_atomic, {"new": torch.arange(10_000.0)}),
}


# ---- file modes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("writer", WRITERS)
def test_written_files_get_the_mode_of_any_file_the_user_creates(tmp_path, writer, umask):
    write, content = WRITERS[writer]
    previous = os.umask(umask)
    try:
        write(tmp_path / "written", content)
        (tmp_path / "plain").write_text("by open()")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "written").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


# ---- full disk -----------------------------------------------------------------------------------
def _full_disk_on_write(monkeypatch, number):
    class FullDisk(io.FileIO):
        """A file on a device that fills up after 64 bytes."""

        def write(self, data):
            if self.tell() + len(data) > 64:
                raise OSError(number, os.strerror(number))
            return super().write(data)

    monkeypatch.setattr(atomic, "open", lambda file, mode: FullDisk(file, mode), raising=False)


def _full_disk_on_fsync(monkeypatch, number):
    def fsync(fd):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(atomic.os, "fsync", fsync)


@pytest.mark.parametrize("fail", [_full_disk_on_write, _full_disk_on_fsync], ids=["write", "fsync"])
@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
@pytest.mark.parametrize("writer", WRITERS)
def test_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, writer, number, fail):
    write, content = WRITERS[writer]
    path = tmp_path / "results" / "summary"
    atomic.write_text_atomic(path, "previous complete content\n")
    fail(monkeypatch, number)
    with pytest.raises(DiskFullError) as raised:
        write(path, content)
    monkeypatch.undo()
    error = raised.value
    assert isinstance(error, OSError) and error.errno == number
    message = str(error)
    assert f"no space left on the device holding {path}: free space" in message
    assert "re-run the same command to continue from the last finished task" in message
    assert "enforce fail" not in "".join(traceback.format_exception(error))
    assert path.read_text() == "previous complete content\n"
    assert [p.name for p in path.parent.iterdir()] == ["summary"], "the temporary was left behind"


def test_torch_reports_a_full_disk_as_a_cpp_error_without_clcore():
    """Why the writer looks past torch's RuntimeError: what torch alone says on a full disk."""

    class FullStream(io.BytesIO):
        def write(self, data):
            if self.tell() + len(data) > 64:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    with pytest.raises(RuntimeError, match="enforce fail"):
        torch.save({"new": torch.arange(10_000.0)}, FullStream())


# ---- temporaries of killed writers ---------------------------------------------------------------
def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    # A writer killed (SIGKILL) between writing and renaming: its temporary is left behind.
    kill_mid_write = (
        "import os, sys\n"
        "from clcore.utils import atomic\n"
        "atomic.os.fsync = lambda fd: os.kill(os.getpid(), 9)\n"
        "atomic.write_json_atomic(sys.argv[1], {'new': 1})\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", kill_mid_write, str(folder / "summary.json")], cwd=REPO, capture_output=True
    )
    assert killed.returncode == -9, killed.stderr.decode()
    left = list(folder.iterdir())
    assert len(left) == 1 and atomic.TEMPORARY_NAME.fullmatch(left[0].name), left
    also_stale = folder / ".task_2.ckpt.0123456789abcdef.tmp"
    also_stale.write_bytes(b"half a checkpoint")

    kept = {
        ".notes.tmp": "file",  # a user's file: no random part
        "x.tmp": "file",  # no leading dot
        ".x.0123456789ABCDEF.tmp": "file",  # not the writer's (lower-case) hex
        ".x.0123456789abcde.tmp": "file",  # 15 digits, not 16
        ".x.0123456789abcdef.tmp.bak": "file",
        "summary.json": "file",
        ".y.0123456789abcdef.tmp": "folder",  # named like a temporary, but a folder
        ".z.0123456789abcdef.tmp": "symlink",
        "sub": "folder",
    }
    for name, kind in kept.items():
        if kind == "file":
            (folder / name).write_text("keep me")
        elif kind == "folder":
            (folder / name).mkdir()
        else:
            (folder / name).symlink_to(folder / "summary.json")
    nested = folder / "sub" / ".summary.json.0123456789abcdef.tmp"
    nested.write_text("not this folder's")

    removed = remove_stale_temporaries(folder)

    assert removed == sorted([left[0], also_stale])
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    assert nested.exists()
    assert remove_stale_temporaries(folder) == []
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ---- readers of files anyone may have planted ----------------------------------------------------
def _read_checkpoint(path: Path):
    read_checkpoint(path)


def _resume_from(path: Path):
    """The whole resume decision: the latest checkpoint is found, then read (and refused)."""
    cfg = OmegaConf.create({"resume": "auto", "paths": {"output_dir": str(path.parents[1])}})
    latest, problems = resume_plan(cfg)
    assert latest is None and len(problems) == 1
    raise CheckpointError(problems[0])


def _load_kfac_cache(path: Path):
    load_or_compute_factors(path.parent, {"task": 1}, lambda: pytest.fail("recomputed over the bad file"))


def _read_task_vector(path: Path):
    read_task_vector(path, tangent=False, parameter_names=["weight"])


def _load_saved_classifier(path: Path):
    SavedClassifier(path)


def _load_clta_task_vector(path: Path):
    """``clta`` reuses a task vector of an earlier run from ``<vectors>/<mode>/<task>.pt``."""
    cfg = OmegaConf.create(
        {
            "modes": ["standard"],
            "model": {"name": "stub"},
            "reuse_task_vectors": True,
            "seed": 0,
            "loader": {"num_workers": 0},
            "finetune": {
                "steps": 1,
                "batch_size": 1,
                "lr": 0.1,
                "weight_decay": 0.0,
                "warmup_steps": 0,
                "max_grad_norm": 1.0,
            },
        }
    )
    task = TaskData("task", ["a"], ["{}"], train=[], val=[], test=[], val_labels=torch.zeros(1))
    protocol._task_vectors(cfg, None, [task], {"task": None}, "cpu", path.parents[1], print)


# (reader, where it reads, the exception it raises)
READERS = {
    "checkpoint": (_read_checkpoint, "run/checkpoints/task_1.ckpt", CheckpointError),
    "resume": (_resume_from, "run/checkpoints/task_3.ckpt", CheckpointError),
    "kfac_cache": (_load_kfac_cache, f"cache/{cache_file('.', {'task': 1}).name}", ValueError),
    "task_vector": (_read_task_vector, "task_vectors/task_1.pt", ValueError),
    "saved_classifier": (_load_saved_classifier, "classifier.pt", ValueError),
    "clta_task_vector": (_load_clta_task_vector, "vectors/standard/task.pt", ValueError),
}


def _raised_within(seconds: float, read, path: Path) -> BaseException | None:
    """What ``read(path)`` raised; fails the test if it is still running (blocked) after ``seconds``."""
    raised = []

    def run():
        try:
            read(path)
        except BaseException as error:  # handed to the test
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if stat.S_ISFIFO(path.stat().st_mode):  # let the blocked reader go
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading {path} still blocks after {seconds} s")
    return raised[0] if raised else None


def _plant(kind: str, path: Path, monkeypatch) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:  # a socket; bound by a relative name, since socket paths are limited to ~100 characters
        monkeypatch.chdir(path.parent)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path.name)
        listener.close()


@pytest.mark.parametrize(
    ("kind", "described"), [("fifo", "a FIFO"), ("directory", "a directory"), ("socket", "a socket")]
)
@pytest.mark.parametrize("reader", READERS)
def test_a_path_that_is_not_a_regular_file_is_refused_unopened(
    tmp_path, monkeypatch, reader, kind, described
):
    read, where, expected = READERS[reader]
    path = tmp_path / where
    _plant(kind, path, monkeypatch)
    error = _raised_within(5, read, path)
    assert isinstance(error, expected), repr(error)
    assert f"{path} is {described}" in str(error)
    assert "refused without opening it" in str(error)


def test_a_symlink_to_a_checkpoint_is_read(tmp_path):
    from clcore.clrun.checkpoint import CHECKPOINT_FORMAT, capture_rng_state

    real = tmp_path / "elsewhere.ckpt"
    content = {"format": CHECKPOINT_FORMAT, "task_id": 0, "config_hash": "x", "state_dict": {}}
    atomic.torch_save_atomic(real, {**content, "cl_state": {}, "results": {}, "rng": capture_rng_state()})
    link = tmp_path / "checkpoints" / "task_1.ckpt"
    link.parent.mkdir()
    link.symlink_to(real)
    assert read_checkpoint(link)["config_hash"] == "x"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("write", ["pickle", "torch.save"])
@pytest.mark.parametrize("reader", READERS)
def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, reader, write):
    read, where, expected = READERS[reader]
    path, marker = tmp_path / where, tmp_path / "payload_ran"
    path.parent.mkdir(parents=True, exist_ok=True)
    if write == "pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    else:
        torch.save({"weight": RunsCode(marker)}, path)
    error = _raised_within(5, read, path)
    assert isinstance(error, expected), repr(error)
    assert not marker.exists(), "the payload ran"
    message = str(error)
    assert str(path) in message
    assert "refused without running anything" in message
    assert "delete it if you did not write it" in message
    assert "weights_only" not in "".join(traceback.format_exception(error)), "torch's unsafe advice shown"
