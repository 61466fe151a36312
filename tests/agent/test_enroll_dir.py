"""`cairn-agent enroll` says at once, naming the folder and the way out, when it could not
write its files, before the secret is asked for; a folder it can make is fine."""

from __future__ import annotations

from agent.__main__ import _unwritable, main


def test_a_folder_that_can_be_made_is_fine(tmp_path):
    assert _unwritable(tmp_path / "new" / "cairn-agent") is None
    assert _unwritable(tmp_path) is None


def test_a_path_under_a_file_is_refused_in_words(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    target = blocker / "cairn-agent"
    why = _unwritable(target)
    assert why and str(target) in why and "--dir" in why
    monkeypatch.setenv("CAIRN_ENROLL_SECRET", "")  # never reached
    code = main(["enroll", "--server", "http://127.0.0.1:9", "--code", "web-01",
                 "--dir", str(target)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to") and "--dir" in err
