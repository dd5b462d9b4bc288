import pytest

from diffalign.files import atomic_save, atomic_write_text


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
