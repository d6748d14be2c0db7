"""The one-line messages of bertforge.pipeline.failures, on this machine's real file systems:
which file, which file system (mount point, space left) and the fix that fits it."""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bertforge.pipeline.failures import configured_outputs, human_bytes, write_error_message


def df_mount(path: Path) -> str:
    """The mount point `df` reports for `path` (or its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    out = subprocess.run(["df", "--output=target", str(path)], capture_output=True, text=True)
    return out.stdout.splitlines()[-1].strip()


def os_error(code: int, filename: Path | None = None) -> OSError:
    """The OSError the kernel's `code` gives a write of `filename`."""
    if filename is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), str(filename))


@pytest.fixture
def other_file_system(tmp_path):
    """A writable directory on another file system than tmp_path (/dev/shm), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or df_mount(shm) == df_mount(tmp_path):
        pytest.skip("no writable /dev/shm on a file system of its own")
    directory = shm / f"bertforge-test-{uuid.uuid4().hex}"
    directory.mkdir()
    yield directory
    shutil.rmtree(directory)


def test_a_full_outputs_disk_names_the_file_its_mount_free_space_and_paths_outputs(
    tmp_path, other_file_system
):
    outputs = tmp_path / "outputs"
    target = outputs / "artifacts" / "pretrain" / "0123456789ab" / "checkpoints" / "last.ckpt"
    message = write_error_message(os_error(errno.ENOSPC, target), outputs, other_file_system)
    mount = df_mount(tmp_path)
    assert message.startswith(f"cannot write {target}: No space left on device; {mount} is full (")
    total = human_bytes(shutil.disk_usage(mount).total)
    assert re.search(rf"\(\d[\d.]* [kMGT]?B free of {re.escape(total)}\)", message), message
    assert f"the file system of paths.outputs={outputs}: free space there" in message
    assert "or set paths.outputs to a directory on a disk with room" in message
    assert "TMPDIR" not in message
    assert message.endswith("(the unfinished artifact is not marked complete)")


def test_a_full_tmpdir_of_its_own_says_set_tmpdir_not_paths_outputs(tmp_path, other_file_system):
    outputs = tmp_path / "outputs"
    target = other_file_system / "tmpxiexsrdy"
    message = write_error_message(os_error(errno.ENOSPC, target), outputs, other_file_system)
    assert message.startswith(f"cannot write {target}: No space left on device; ")
    assert f"{df_mount(other_file_system)} is full (" in message
    assert f"the file system of the temporary directory TMPDIR={other_file_system}" in message
    assert "or set TMPDIR to a directory on a disk with room, e.g. TMPDIR=" in message
    assert f"TMPDIR={outputs / 'tmp'} (" in message  # where there is room
    assert "paths.outputs to" not in message


def test_a_failed_write_that_names_no_file_names_the_file_system(tmp_path):
    """A write() error carries no file name (e.g. ENOSPC from /dev/full): the message names
    the file system of paths.outputs and TMPDIR, both under tmp_path here."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as caught:
        full.write(b"x" * 4096)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename is None
    outputs, tmpdir = tmp_path / "outputs", tmp_path / "tmp"
    message = write_error_message(caught.value, outputs, tmpdir)
    assert message.startswith(f"cannot write a file: No space left on device; {df_mount(tmp_path)}")
    assert f"paths.outputs={outputs} and the temporary directory TMPDIR={tmpdir}" in message
    assert "or set paths.outputs and TMPDIR to directories on a disk with room" in message


def test_quota_size_limit_permissions_and_read_only_each_name_their_fix(tmp_path):
    outputs, tmpdir = tmp_path / "outputs", tmp_path / "tmp"
    inside = outputs / "artifacts" / "x.json"
    quota = write_error_message(os_error(errno.EDQUOT, inside), outputs, tmpdir)
    assert "is over your quota (" in quota and "free space there" in quota

    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY:
        too_big = write_error_message(os_error(errno.EFBIG, inside), outputs, tmpdir)
        assert f"the file system at {df_mount(tmp_path)} allows no larger file" in too_big

    denied = write_error_message(os_error(errno.EACCES, inside), outputs, tmpdir)
    fix = "set paths.outputs to a directory you can write to"
    assert denied.startswith(f"cannot write {inside}: Permission denied; {fix} ("), denied
    denied_tmp = write_error_message(os_error(errno.EACCES, tmpdir / "tmpab"), outputs, tmpdir)
    assert "set TMPDIR to a directory you can write to" in denied_tmp
    cache = tmp_path / "home" / ".cache" / "x" / "file"
    elsewhere = write_error_message(os_error(errno.EPERM, cache), outputs, tmpdir)
    assert f"make {cache.parent} writable" in elsewhere

    read_only = write_error_message(os_error(errno.EROFS, inside), outputs, tmpdir)
    assert f"{df_mount(tmp_path)} is mounted read-only" in read_only
    assert "set paths.outputs to a directory you can write to" in read_only


def test_other_errors_are_left_to_the_caller(tmp_path):
    assert write_error_message(os_error(errno.ENOENT, tmp_path / "x"), tmp_path) is None
    assert write_error_message(OSError("no errno"), tmp_path) is None


def test_paths_outputs_is_read_from_the_config_or_none():
    cfg = OmegaConf.create({"paths": {"outputs": "/data/out"}})
    assert configured_outputs(cfg) == Path("/data/out")
    assert configured_outputs(OmegaConf.create({"paths": {"outputs": "${missing}"}})) is None


def test_interrupt_messages_name_the_stage_step_and_checkpoint(tmp_path, capsys):
    from bertforge.lit.trainer import TrainingInterrupted, save_atomically
    from bertforge.pipeline.failures import exit_interrupted, interrupt_message
    from bertforge.pipeline.stage import BuildContext

    outputs = tmp_path / "outputs"
    seed_dir = outputs / "artifacts" / "finetune" / "0123456789ab" / "training" / "seed1"
    checkpoint = seed_dir / "checkpoints" / "last.ckpt"
    save_atomically({"global_step": 8}, checkpoint)
    resumable = TrainingInterrupted(seed_dir, 9, checkpoint, 8)
    assert interrupt_message(resumable, outputs) == (
        f"interrupted: finetune stopped at step 9; rerun the same command to resume from "
        f"{checkpoint} (step 8)"
    )
    early = TrainingInterrupted(seed_dir, 1, None, None)
    assert interrupt_message(early, outputs) == (
        "interrupted: finetune stopped at step 1 before its first checkpoint; nothing was "
        "saved yet, rerun the same command to start it again"
    )

    def build(ctx: BuildContext):  # Ctrl-C while a stage without checkpoints is built
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        build(BuildContext("tokenizer", "0123456789ab", outputs, None, {}, None))
    assert interrupt_message(caught.value, outputs).startswith(
        "interrupted: tokenizer stopped before it was complete; nothing of it was saved"
    )
    assert interrupt_message(KeyboardInterrupt(), outputs).startswith("interrupted: stopped;")

    with pytest.raises(SystemExit) as exited:
        exit_interrupted(resumable, outputs)
    assert exited.value.code == 130
    assert capsys.readouterr().err == interrupt_message(resumable, outputs) + "\n"
