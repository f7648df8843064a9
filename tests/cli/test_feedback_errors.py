"""`opsloop feedback` with a log or a labels file it cannot use (issue 8, defects 10 and 11 follow-up).

Found by the hostile-client review: a log file that is not a database, a log
path that is a directory, `.opsloop/serving` being a file, and a deeply
nested JSON lines file were each an "internal error ... (this is a bug in
opsloop ...)"; outside a project, a log nobody reads was created silently;
CSV labels `1_0` (read as 10) and `١` (an Arabic-Indic digit, read as 1)
were taken, and cells beyond the header dropped. Each is now one line naming
the file and what is wrong, exit 1, and nothing is written.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from opsloop.testing import invoke


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "opsloop.toml").write_text('[project]\nname = "labels"\n', encoding="utf-8")
    return tmp_path


def _refused(args: list[str], cwd: Path, *words: str) -> str:
    result = invoke(args, cwd=cwd)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _labels(db: Path) -> list[tuple[str, float]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT request_id, label FROM feedback ORDER BY id").fetchall()
    finally:
        con.close()


def test_a_log_that_is_not_a_database(project: Path) -> None:
    bad = project / "bad.db"
    bad.write_text("this is not a database\n" * 10, encoding="utf-8")
    _refused(["feedback", "r1", "1", "--log-path", str(bad)], project, str(bad), "not a database")
    assert bad.read_text(encoding="utf-8") == "this is not a database\n" * 10


def test_a_log_path_that_is_a_directory(project: Path) -> None:
    db = project / ".opsloop" / "serving" / "predictions.db"  # the default log
    db.mkdir(parents=True)
    _refused(["feedback", "r1", "1"], project, str(db), "is a directory")


def test_a_serving_directory_that_is_a_file(project: Path) -> None:
    (project / ".opsloop").mkdir()
    (project / ".opsloop" / "serving").write_text("", encoding="utf-8")
    _refused(["feedback", "r1", "1"], project, str(project / ".opsloop" / "serving"), "is a file")


def test_a_deeply_nested_json_lines_file(project: Path) -> None:
    labels = project / "labels.jsonl"
    labels.write_text('{"request_id": "r1", "label": 1}\n' + "[" * 100_000 + "\n", encoding="utf-8")
    _refused(["feedback", "--file", str(labels)], project, f"{labels}:2", "nested too deeply")
    assert not (project / ".opsloop").exists()


@pytest.mark.parametrize(("line", "words"), [
    ("r1,1_0", ["labels.csv:2", "'1_0' is not a number"]),
    ("r1,\u0661", ["labels.csv:2", "is not a number"]),
    ("r1,1,0", ["labels.csv:2", "1 cell(s) more than the header's 2 columns"]),
])
def test_csv_labels_are_plain_numbers_in_the_header_columns(project: Path, line: str, words: list[str]) -> None:
    labels = project / "labels.csv"
    labels.write_text(f"request_id,label\n{line}\nr2,0\n", encoding="utf-8")
    _refused(["feedback", "--file", str(labels)], project, *words)
    assert not (project / ".opsloop").exists()


def test_plain_csv_numbers_are_still_read(project: Path) -> None:
    labels = project / "labels.csv"
    labels.write_text("request_id,label\nr1,1\nr2,-0.5\nr3,2E3\nr4,true\n", encoding="utf-8")
    result = invoke(["feedback", "--file", str(labels)], cwd=project)
    assert result.exit_code == 0, result.stderr
    assert _labels(project / ".opsloop" / "serving" / "predictions.db") == [
        ("r1", 1), ("r2", -0.5), ("r3", 2000), ("r4", 1)]


def test_outside_a_project_no_log_is_created(tmp_path: Path) -> None:
    _refused(["feedback", "r1", "1"], tmp_path, str(tmp_path / ".opsloop" / "serving" / "predictions.db"),
             "no opsloop.toml", "--log-path")
    assert not (tmp_path / ".opsloop").exists()
    db = tmp_path / "elsewhere.db"  # named: made and used
    assert invoke(["feedback", "r1", "1", "--log-path", str(db)], cwd=tmp_path).exit_code == 0
    assert _labels(db) == [("r1", 1)]
