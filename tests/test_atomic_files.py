"""Results files are replaced whole or not at all."""

import json

import pytest

from compress.common.atomic_files import replaced_atomically, write_atomically, write_json_atomically


def test_writes_text_bytes_and_json_into_new_folders(tmp_path):
    write_atomically(tmp_path / "a" / "note.txt", "héllo\n")
    write_atomically(tmp_path / "b.bin", b"\x00\x01")
    write_json_atomically(tmp_path / "c" / "d.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert (tmp_path / "a" / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c" / "d.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    write_json_atomically(target, {"complete": True})
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as tmp:
            tmp.write_text('{"compl')  # half a file, then the writer dies
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
