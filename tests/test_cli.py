"""The `mmgdino` command line: info (detect is in test_detector.py, bench's report in test_bench.py)."""

from mmgdino.cli import main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ms_deform_attn" in out and "backends:" in out
