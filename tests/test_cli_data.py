"""`attngan data check` on a good and a broken own-data folder."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from attngan.cli import cli


def _folder(tmp_path, n=4):
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"a red circle number {i}\n", encoding="utf-8")
    return tmp_path


def test_data_check_good_folder(tmp_path):
    res = CliRunner().invoke(cli, ["data", "check", "--dataset", "folder", "--data-dir", str(_folder(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "usable: yes" in res.output


def test_data_check_reports_every_problem_and_exits_nonzero(tmp_path):
    root = _folder(tmp_path)
    (root / "img1.txt").write_bytes(b"\xff\xfe\x00bad")  # not UTF-8
    (root / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # corrupt image
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    res = CliRunner().invoke(cli, ["data", "check", "--dataset", "folder", "--data-dir", str(root)])
    assert res.exit_code == 1
    assert "img1.txt" in res.output and "img2.png" in res.output
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # nothing changed


def test_data_check_needs_data_dir():
    res = CliRunner().invoke(cli, ["data", "check", "--dataset", "birds"])
    assert res.exit_code == 2 and "--data-dir" in res.output
