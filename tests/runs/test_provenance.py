"""results.json's provenance block: the commit and dirty flag as git itself reports them, and the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gnr650.runs import provenance


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def test_commit_and_dirty_flag_follow_the_checkout(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "tracked.py").write_text("a = 1\n")
    _git(repo, "add", "tracked.py")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "untracked.txt").write_text("not part of the code\n")
    clean = provenance(repo)
    assert clean["commit"] == _git(repo, "rev-parse", "HEAD").strip() and clean["dirty"] is False
    (repo / "tracked.py").write_text("a = 2\n")
    assert provenance(repo)["dirty"] is True
    outside = provenance(tmp_path / "not-a-repo")
    assert outside["commit"] is None and outside["dirty"] is None
    machine = clean["machine"]
    assert machine["cores"] == os.cpu_count() and machine["cpu"]
