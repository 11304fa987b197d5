"""The command line: a covidct error is one line and exit code 2 (a traceback only with
--debug), an interrupt says how to continue, and every subcommand is wired."""

from __future__ import annotations

import pytest

from covidct import cli
from covidct.model_card import ReportInputError


def test_a_covidct_error_is_one_line_and_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(ReportInputError):
        cli.main(["--debug", "report", str(tmp_path)])


@pytest.mark.parametrize(
    ("command", "hint"), [("train", "covidct train --resume RUN"), ("prepare", "run the same")]
)
def test_an_interrupt_exits_130_saying_how_to_continue(command, hint, monkeypatch, capsys):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    argv = {"train": ["train", "--data", "x"], "prepare": ["prepare", "x", "--out", "y"]}[command]
    assert cli.main(argv) == 130
    assert hint in capsys.readouterr().err


def test_every_subcommand_of_the_parser_has_a_handler():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["train", "--data", "x", "--epsilon", "0"])
    assert exit_.value.code == 2
