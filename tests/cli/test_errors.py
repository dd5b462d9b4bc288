"""Expected failures get one line, not a traceback: a full disk, a read-only or forbidden folder, a file where
a folder is needed (cli/errors.py), checked on constructed errors and on real commands."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffalign.cli.errors import expected_failure
from diffalign.cli.main import main

DISK_FULL = "no space left on device: free space or choose another output folder"


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), DISK_FULL),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x.parquet"),
     "no space left on device writing /out/x.parquet: free space or choose another output folder"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/out/w"),
     "no space left on device writing /out/w: free space or choose another output folder"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/run"),
     "cannot write /ro/run: the file system is read-only; choose another output folder"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/run"),
     "cannot write /root/run: permission denied; choose a folder you can write to, or change its permissions"),
    (PermissionError(errno.EPERM, "Operation not permitted", "/sys/x"),
     "cannot write /sys/x: permission denied; choose a folder you can write to, or change its permissions"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), "/tmp is a folder, where a file is needed; give a file path"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/x" * 3), "file name too long: /x/x/x"),
])
def test_file_system_errors_get_one_line(error, message):
    assert expected_failure(error) == message


def test_a_file_where_a_folder_is_needed_is_named(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    below = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker / "run" / "config.yaml"))
    assert expected_failure(below) == (f"cannot use {blocker / 'run' / 'config.yaml'}: {blocker} is a file, where a "
                                       "folder is needed; move it or choose another path")
    exists = FileExistsError(errno.EEXIST, "File exists", str(blocker))
    assert expected_failure(exists) == f"{blocker} is a file, where a folder is needed; move it or choose another path"
    assert expected_failure(FileExistsError(errno.EEXIST, "File exists", str(tmp_path))) is None  # a folder: a bug


def test_a_full_disk_is_found_behind_a_library_s_own_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("An error occurred while generating the dataset") from cause
    except RuntimeError as wrapped:
        assert expected_failure(wrapped) == DISK_FULL
    safetensors_like = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                    '"No space left on device" })')
    assert expected_failure(safetensors_like).startswith("no space left on device (Error while serializing")


@pytest.mark.parametrize("error", [
    OSError(errno.ECONNREFUSED, "Connection refused", "x"), OSError("no errno"), RuntimeError("a bug"),
    PermissionError(errno.EACCES, "Permission denied"),  # no file named: nothing to tell the user
    TypeError("a bug"),
])
def test_other_errors_keep_their_traceback(error):
    assert expected_failure(error) is None


def test_train_into_a_path_below_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = ["train", "train.max_steps=1", "train.batch_size=2", "train.trackers=[]", "data.max_pairs=4"]
    assert main([*args, f"train.output_dir={blocker / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "diffalign train: error: " in err and str(blocker) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the message and the DIFFALIGN_DEBUG hint


@contextmanager
def _tmpfs(options: str) -> Iterator[Path]:
    """A fresh tmpfs mounted with `options` (skips the test where mounting is not allowed: it needs root)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder = Path(tempfile.mkdtemp(prefix="diffalign-tmpfs-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        folder.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


@pytest.fixture
def noise_pairs(tmp_path) -> Path:
    """Two pairs of incompressible 96 x 96 images (about 110 KB of parquet) with shapes-world captions."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(4):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    caption = "a red circle on a blue background"
    path = tmp_path / "noise.parquet"
    pq.write_table(pa.table({"caption": [caption] * 2, "jpg_0": images[:2], "jpg_1": images[2:],
                             "label_0": [1.0, 0.0], "label_1": [0.0, 1.0]}), path)
    return path


def _relabel(source: Path, out: Path) -> int:
    return main(["relabel", str(source), "--scorer", "shapes", "--out", str(out), "--no-progress"])


def test_a_full_disk_is_one_line_and_leaves_no_partial_shard(noise_pairs, capsys):
    with _tmpfs("size=64k") as full:
        assert _relabel(noise_pairs, full / "out") == 2
        err = capsys.readouterr().err
        assert "diffalign relabel: error: no space left on device" in err and "Traceback" not in err
        left = sorted(p.relative_to(full).as_posix() for p in full.rglob("*") if p.is_file())
        assert left in ([], ["out/progress.json"]), left  # no temporary or half-written shard (the settings may be)


def test_a_read_only_output_folder_is_one_line(noise_pairs, tmp_path, capsys):
    if os.geteuid() == 0:
        with _tmpfs("ro,size=64k") as read_only:
            assert _relabel(noise_pairs, read_only / "out") == 2
            expected = f"cannot write {read_only / 'out'}: the file system is read-only; choose another output folder"
    else:  # an ordinary user: a folder without write permission
        read_only = tmp_path / "locked"
        read_only.mkdir(mode=0o555)
        assert _relabel(noise_pairs, read_only / "out") == 2
        expected = f"cannot write {read_only / 'out'}: permission denied"
    err = capsys.readouterr().err
    assert f"diffalign relabel: error: {expected}" in err and "Traceback" not in err
