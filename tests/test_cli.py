"""The command line: every console script is installed and documented, user errors are one
``error: ...`` line with exit code 2 (no traceback), and scripts/*.py are thin wrappers.

Most checks run the commands in-process (each subprocess pays torch's import time on a
shared 2-core machine); the installed entry points and one error per kind run as real
processes, started together.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from transformer_graph.cli import errors, evaluate, fetch, plot_act, reproduce, train, translate, visualize
from transformer_graph.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"tg-train": train, "tg-evaluate": evaluate, "tg-translate": translate, "tg-visualize": visualize,
            "tg-plot-act": plot_act, "tg-fetch-multi30k": fetch, "tg-reproduce": reproduce}
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate", "translate.py": "translate",
           "visualize.py": "visualize", "plot_act.py": "plot_act", "fetch_multi30k.py": "fetch",
           "reproduce.py": "reproduce"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = {"model": dict(layers=1, d_model=16, d_ff=32, heads=2, max_len=32),
        "data": dict(task="copy", train_size=16, valid_size=4, test_size=4, batch_size=8, alphabet="abcd"),
        "train": dict(max_epochs=1, threads=1)}


def installed(command: str) -> Path:
    """The console script pip put beside this interpreter."""
    path = Path(sys.executable).parent / command
    assert path.is_file(), (f"{command} is not installed beside {sys.executable}; run "
                            f"`{sys.executable} -m pip install -e .` (make install) after changing pyproject.toml")
    return path


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line ``err`` must consist of."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------
# 1. Console scripts and their --help
# --------------------------------------------------------------------------
def test_every_command_is_a_console_script_of_its_cli_module():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
               if ep.name.startswith("tg-")}
    assert scripts == {name: f"{module.__name__}:main" for name, module in COMMANDS.items()}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_complete(name, capsys):
    module = COMMANDS[name]
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name} ")
    description, _, rest = out.partition("\n\n")[2].partition("\n\n")
    assert len(description.split()) >= 10                      # says what the command does
    assert re.search(rf"^examples:\n  {name} ", out, re.M)   # and shows how to call it
    # Every option has a meaning, and its default where it has one.
    parser = module.parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help.split()) >= 3, (name, action.dest)
        if action.option_strings and action.default not in (None, False, []):
            assert "default" in formatter._get_help_string(action), (name, action.dest)
        for flag in action.option_strings:
            assert flag in out


def test_installed_commands_and_scripts_run():
    """The real entry points (console scripts, ``python -m``, scripts/*.py) as processes, in parallel."""
    procs = {name: start(installed(name), "--help") for name in COMMANDS}
    procs["-m"] = start(sys.executable, "-m", "transformer_graph.cli.translate", "--help")
    procs["script"] = start(sys.executable, ROOT / "scripts" / "plot_act.py", "--help")
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (name, err)
        assert "usage: tg-" in out and "examples:" in out, (name, out)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_thin_wrappers_without_path_tricks(script):
    text = (ROOT / "scripts" / script).read_text()
    assert "sys.path" not in text and "__file__" not in text
    assert f"from transformer_graph.cli.{SCRIPTS[script]} import main\n" in text
    body = ast.parse(text).body
    assert isinstance(body[0].value, ast.Constant) and len(body) == 3  # docstring, import, __main__ guard
    assert text.rstrip().endswith('if __name__ == "__main__":\n    raise SystemExit(main())')


def test_the_library_never_looks_for_the_checkout():
    """An installed package has no repository around it: no Path(__file__).parents tricks."""
    package = ROOT / "transformer_graph"
    tricks = {p.relative_to(package) for p in package.rglob("*.py")
              if re.search(r"__file__\W*(\.resolve\(\))?\.parent", p.read_text())}
    assert not tricks, tricks


# --------------------------------------------------------------------------
# 2. User errors: one line, exit code 2
# --------------------------------------------------------------------------
@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def bad_key_config(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "layrs": 2}}))
    return path


CASES = {
    "bad config key": ("tg-train", lambda t, c: ["--config", bad_key_config(t)], r"model\.layrs: unknown key"),
    "bad --set key": ("tg-train", lambda t, c: ["--config", c, "--set", "model.layrs=2"],
                      r"--set model\.layrs=2: model\.layrs: unknown key; did you mean 'layers'\?"),
    "bad --set syntax": ("tg-train", lambda t, c: ["--config", c, "--set", "nonsense"], r"expected dotted\.key=value"),
    "missing config": ("tg-train", lambda t, c: ["--config", t / "none.yaml"], r"none\.yaml: config file not found"),
    "evaluate missing checkpoint": ("tg-evaluate", lambda t, c: ["--checkpoint", t / "none.pt"], r"none\.pt"),
    "translate missing checkpoint": ("tg-translate", lambda t, c: ["--checkpoint", t / "none.pt", "a"], r"none\.pt"),
    "visualize missing checkpoint": ("tg-visualize", lambda t, c: ["--checkpoint", t / "none.pt", "--example", "0",
                                                                   "--out", t], r"none\.pt"),
    "plot-act missing checkpoint": ("tg-plot-act", lambda t, c: ["--checkpoint", t / "none.pt", "--out", t / "a.png"],
                                    r"none\.pt"),
    "fetch failing download": ("tg-fetch-multi30k", lambda t, c: ["--dest", t / "m30k", "--base-url",
                                                                  (t / "nowhere").as_uri()],
                               r"downloading file://.*train\.en\.gz failed"),
}


@pytest.mark.parametrize("case", CASES)
def test_user_errors_are_one_line_and_exit_code_2(case, tmp_path, tiny_config, capsys):
    name, argv, message = CASES[case]
    with pytest.raises(SystemExit) as exit_:
        COMMANDS[name].main([str(a) for a in argv(tmp_path, tiny_config)])
    assert exit_.value.code == 2
    assert re.search(message, one_error_line(capsys.readouterr().err))


def test_user_errors_of_real_processes(tmp_path, tiny_config):
    """What a shell sees: exit status 2 and one stderr line, from the installed commands."""
    procs = {case: start(installed(CASES[case][0]), *CASES[case][1](tmp_path, tiny_config))
             for case in ("bad config key", "bad --set key", "evaluate missing checkpoint")}
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (case, err)
        assert re.search(CASES[case][2], one_error_line(err)), (case, err)


# --------------------------------------------------------------------------
# 3. The handler itself
# --------------------------------------------------------------------------
def test_handler_exit_codes_and_messages(capsys):
    with pytest.raises(SystemExit) as exit_, errors.user_errors():
        raise ConfigError("model.layers: expected a positive integer, got 0\n  (from x.yaml)")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: model.layers: expected a positive integer, got 0   (from x.yaml)\n"

    with pytest.raises(SystemExit) as exit_, errors.user_errors():
        raise KeyboardInterrupt
    assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted\n"

    # A bug is not a user error: it keeps its traceback.
    with pytest.raises(KeyError), errors.user_errors():
        raise KeyError("bug")

    @errors.command
    def ok(x):
        return x + 1
    assert ok(1) == 2 and ok.__name__ == "ok"


def test_the_package_has_one_error_printer():
    """No module but the handler prints ``error: ...`` (the torchrun worker guard, which must
    leave through os._exit, explains a lost peer itself)."""
    allowed = {Path("cli/errors.py"), Path("train/distributed.py")}
    package = ROOT / "transformer_graph"
    printers = {p.relative_to(package) for p in package.rglob("*.py")
                if re.search(r"""print\(f?["']error:""", p.read_text())}
    assert printers <= allowed, printers - allowed
