"""Every command's --help renders, and every command module imports on its own, each in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer

import seg_edge.cli
from seg_edge.cli.app import app

CLI_DIR = Path(seg_edge.cli.__file__).parent


def command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command of the app, found by walking its click tree (none listed by hand)."""
    paths: list[tuple[str, ...]] = []

    def walk(command, path: tuple[str, ...]) -> None:
        paths.append(path)
        # Typer vendors its own click: a group is what has sub-commands
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def run_all(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run each argv in its own process, a few at a time (each process mostly waits on imports)."""
    env = {**os.environ, "COLUMNS": "100"}

    def one(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, argvs))


def test_the_walk_finds_sub_commands():
    paths = command_paths()
    assert ("predict",) in paths and ("import", "onnx") in paths and ("import", "nnunet") in paths
    assert len(paths) >= 20


def test_help_of_every_command_in_a_fresh_process():
    paths = command_paths()
    results = run_all([[sys.executable, "-m", "seg_edge", *path, "--help"] for path in paths])
    failures = []
    for path, result in zip(paths, results):
        usage = f"Usage: python -m seg_edge {' '.join(path)}".rstrip()
        if result.returncode != 0 or "Traceback" in result.stderr or not result.stdout.startswith(usage):
            failures.append(f"seg-edge {' '.join(path)} --help: exit {result.returncode}\n{result.stderr[-800:]}")
    assert not failures, "\n".join(failures)


def test_a_group_without_a_command_shows_its_help():
    groups = [path for path in command_paths() if path in ((), ("import",))]
    results = run_all([[sys.executable, "-m", "seg_edge", *path] for path in groups])
    for path, result in zip(groups, results):
        assert result.returncode == 2 and "Traceback" not in result.stderr, (path, result.stderr)
        assert "Usage: python -m seg_edge" in result.stdout + result.stderr and "Commands" in result.stderr, path


def test_help_text_is_not_read_as_markup():
    """The text a user reads is the text written: '[/MODEL]' in --url's help is not a rich closing tag."""
    result = run_all([[sys.executable, "-m", "seg_edge", "predict", "--help"]])[0]
    assert result.returncode == 0, result.stderr
    assert "[/MODEL]" in " ".join(result.stdout.split())


def test_every_command_module_imports_first_in_a_fresh_process():
    modules = sorted(f"seg_edge.cli.{p.stem}" for p in CLI_DIR.glob("*.py") if p.stem != "__init__")
    assert "seg_edge.cli.predict" in modules and len(modules) > 15
    results = run_all([[sys.executable, "-c", f"import {module}"] for module in modules])
    failures = [f"{module}: {result.stderr.strip().splitlines()[-1:]}"
                for module, result in zip(modules, results) if result.returncode != 0]
    assert not failures, "\n".join(failures)
