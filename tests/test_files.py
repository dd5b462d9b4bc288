import pytest
import torch
from safetensors.torch import save_file

from diffalign.files import atomic_save, atomic_write_text, check_output_folder

from .permissions import modes, umask


def test_atomic_write_text_replaces(tmp_path):
    atomic_write_text(tmp_path / "a" / "f.txt", "one")
    atomic_write_text(tmp_path / "a" / "f.txt", "two")
    assert (tmp_path / "a" / "f.txt").read_text() == "two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]


def test_atomic_save_file_and_folder(tmp_path):
    def write_file(tmp):
        (tmp / "w.bin").write_bytes(b"new")
        return tmp / "w.bin"

    def write_folder(tmp):
        (tmp / "unet").mkdir()
        (tmp / "unet" / "x").write_text("v2")
        return tmp / "unet"

    assert atomic_save(tmp_path, write_file).read_bytes() == b"new"
    atomic_save(tmp_path, write_folder)
    assert atomic_save(tmp_path, write_folder) == tmp_path / "unet"
    assert (tmp_path / "unet" / "x").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet", "w.bin"]


def test_failed_save_leaves_the_old_version(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"old")

    def crash(tmp):
        (tmp / "w.bin").write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save(tmp_path, crash)
    assert (tmp_path / "w.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_what_atomic_save_and_write_put_in_place_gets_the_umask_permissions(tmp_path, mask, file_mode, folder_mode):
    def write_folder(tmp):
        (tmp / "unet" / "sub").mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(tmp / "unet" / "weights.safetensors"))  # safetensors makes 0600 files
        (tmp / "unet" / "sub" / "config.json").write_text("{}")
        return tmp / "unet"

    def write_file(tmp):
        save_file({}, str(tmp / "x.safetensors"))
        return tmp / "x.safetensors"

    with umask(mask):
        atomic_save(tmp_path, write_folder)
        atomic_save(tmp_path, write_file)
        atomic_write_text(tmp_path / "notes" / "a.txt", "text")
    written = modes(tmp_path)
    assert written == {"unet": folder_mode, "unet/sub": folder_mode, "unet/weights.safetensors": file_mode,
                       "unet/sub/config.json": file_mode, "x.safetensors": file_mode, "notes": folder_mode,
                       "notes/a.txt": file_mode}


def test_check_output_folder_names_a_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert check_output_folder(tmp_path) == tmp_path
    with pytest.raises(ValueError, match=f"^--out {tmp_path / 'file'} is a file, not a folder: give a folder path$"):
        check_output_folder(tmp_path / "file", "--out")
    with pytest.raises(ValueError, match=f"output folder {tmp_path / 'file' / 'a' / 'b'}: {tmp_path / 'file'}, on its "
                                         "path, is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "a" / "b")
