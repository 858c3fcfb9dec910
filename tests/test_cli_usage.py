"""Command-line mistakes: the usage line, one ``error:`` line, exit 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from csa import __version__, extras
from csa.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize("argv, usage, says", [
    (["inpaint", "--bogus"], "csa inpaint", "No such option: --bogus"),
    (["inpaint", "a.jpg"], "csa inpaint", "Missing option '-o'"),
    (["serve", "--port", "abc"], "csa serve", "Invalid value for '--port'"),
    (["train", "--config"], "csa train", "'--config' requires an argument"),
    (["masks", "generate"], "csa masks generate", "Missing argument"),
    (["masks", "stats"], "csa masks stats", "Missing argument"),
    (["weights", "fetch"], "csa weights fetch", "Missing argument"),
    (["nope"], "csa", "No such command 'nope'"),
    (["masks", "nope"], "csa masks", "No such command 'nope'"),
])
def test_usage_errors_exit_2_with_usage_and_one_error_line(capsys, argv, usage, says):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"Usage: {usage} "), lines
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], lines
    assert len(lines) == 2, lines


@pytest.mark.parametrize("argv", [[], ["masks"], ["weights"]])
def test_a_command_alone_prints_its_help_and_exits_0(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert "Usage:" in out and "Traceback" not in out + err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"csa {__version__}"


def test_python_dash_m_csa_behaves_like_csa():
    done = subprocess.run([sys.executable, "-m", "csa", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"csa {__version__}"
    done = subprocess.run([sys.executable, "-m", "csa", "inpaint", "--bogus"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: No such option: --bogus" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, extra", [
    (["serve"], "serve"),
    (["evaluate", "--images", ".", "--masks", "centre", "--method", "telea", "--out", "x"], "eval"),
    (["train", "--config", "x.yaml"], "train"),
])
def test_a_command_whose_extra_is_missing_names_it(capsys, monkeypatch, argv, extra):
    monkeypatch.setattr(extras, "missing", lambda name, modules=None: ["somepackage"] if name == extra else [])
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip() == (f"error: csa {argv[0]} needs the [{extra}] extra (missing: somepackage): "
                           f"pip install 'csa-inpaint[{extra}]' (or '.[{extra}]' in a clone)")


@pytest.mark.parametrize("method", ["biharmonic", "patchmatch"])
def test_a_method_whose_extra_is_missing_names_it(tmp_path, capsys, monkeypatch, method):
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "a.png")
    hole = np.zeros((32, 32), np.uint8)
    hole[8:16, 8:16] = 255
    Image.fromarray(hole).save(tmp_path / "m.png")
    monkeypatch.setattr(extras, "missing", lambda name, modules=None: list(modules or ()) if name == "eval" else [])
    code, _, err = run(capsys, "inpaint", str(tmp_path / "a.png"), "-m", str(tmp_path / "m.png"),
                       "-o", str(tmp_path / "out.png"), "--method", method)
    assert code == 2
    assert f"the {method} method needs the [eval] extra" in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_a_port_in_use_is_one_error_line(capsys):
    import socket

    pytest.importorskip("uvicorn")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, _, err = run(capsys, "serve", "--port", str(port))
    assert code == 2
    assert err.strip() == f"error: port {port} on 127.0.0.1 is already in use: pick another with --port"
