"""The output-folder rule: new, empty or the command's own (with --force); never the user's; never over an input."""

from __future__ import annotations

import pytest

from s2sd_deploy.errors import S2SDError
from s2sd_deploy.output_folders import claim_output_folder

RULE = dict(what="an s2sd index", owner_files=["manifest.json"], resumable=[".build"])


def test_new_and_empty_folders_are_taken(tmp_path):
    assert claim_output_folder(tmp_path / "new", "--out", **RULE) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert claim_output_folder(tmp_path / "empty", "--out", **RULE) == tmp_path / "empty"


def test_a_users_folder_is_refused_even_with_force(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(S2SDError, match="is not an s2sd index and is not empty"):
            claim_output_folder(tmp_path / "notes", "--out", force=force, **RULE)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_its_own_output_needs_force_unless_resumable(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text("{}")
    with pytest.raises(S2SDError, match="already holds an s2sd index; pass --force"):
        claim_output_folder(tmp_path / "index", "--out", **RULE)
    assert claim_output_folder(tmp_path / "index", "--out", force=True, **RULE)
    (tmp_path / "unfinished" / ".build").mkdir(parents=True)
    assert claim_output_folder(tmp_path / "unfinished", "--out", **RULE)


@pytest.mark.parametrize("out, relation", [(".", "contains"), ("gallery", "is"), ("gallery/sub", "is inside")])
def test_an_output_overlapping_an_input_is_refused(tmp_path, monkeypatch, out, relation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gallery").mkdir()
    with pytest.raises(S2SDError, match=f"{relation} the input gallery"):
        claim_output_folder(out, "--out", inputs=["gallery"], force=True, **RULE)


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(S2SDError, match="is a file"):
        claim_output_folder(tmp_path / "f", "--out", **RULE)


OWN = dict(what="an s2sd index", owner_files=["manifest.json"], resumable=[".build/plan.json"])


def test_a_folder_replaced_whole_may_hold_only_its_own_files(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text("{}")
    (index / "notes.txt").write_text("mine")
    with pytest.raises(S2SDError, match="holds an s2sd index and also notes.txt, which s2sd did not write"):
        claim_output_folder(index, "--out", force=True, own_names=["manifest.json", ".*.tmp"], **OWN)
    (index / "notes.txt").unlink()
    (index / ".manifest.json.x1.tmp").write_text("")
    assert claim_output_folder(index, "--out", force=True, own_names=["manifest.json", ".*.tmp"], **OWN) == index


def test_a_users_folder_with_a_build_subfolder_is_not_resumable(tmp_path):
    (tmp_path / "project" / ".build").mkdir(parents=True)  # many projects have one; ours holds plan.json
    (tmp_path / "project" / "main.c").write_text("int main;")
    with pytest.raises(S2SDError, match="is a folder that is not an s2sd index"):
        claim_output_folder(tmp_path / "project", "--out", **OWN)


@pytest.mark.parametrize("out, message", [(".", "is the current folder"), ("..", "contains the current folder")])
def test_the_current_folder_is_never_replaced_whole(tmp_path, monkeypatch, out, message):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(S2SDError, match=f"--out {out} {message}, which the command would replace whole"):
        claim_output_folder(out, "--out", replaced_whole=True, **OWN)
    if out == ".":
        assert claim_output_folder(out, "--out", **OWN)  # a command that writes files into it may


def test_the_filesystem_root_is_refused(tmp_path):
    with pytest.raises(S2SDError, match="is the root of the filesystem"):
        claim_output_folder("/", "--out", replaced_whole=True, force=True, **OWN)
