"""The README's commands that can run offline, run as written (the simulator stands in for the
API): the set-up's demo, the quick start, and the query line a run summary prints."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _block(title: str) -> list[str]:
    """The lines of the first ```bash block after the heading ``title``."""
    section = README.split(f"## {title}", 1)[1]
    body = section.split("```bash", 1)[1].split("```", 1)[0]
    return [ln for ln in body.strip().splitlines() if ln.strip()]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOBIZ_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_group(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``argv`` in a process group of its own; past ``timeout`` the whole group is killed (a
    simulator started in the background must not keep the pipes open)."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
        out, err = proc.communicate()
        err += f"\n(killed after {timeout} s)"
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_setup_demo_runs_as_written(tmp_path: Path) -> None:
    demo = next(ln for ln in _block("Set-up: two commands") if "vobiz-harvest demo" in ln)
    command = demo.split("&&", 1)[1].split("#", 1)[0].strip()  # the install is the suite's own
    done = subprocess.run(
        command, shell=True, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert "COMPLETE (exit 0)" in done.stderr and "duckdb>" in done.stdout and "answer_pct" in done.stdout


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    port = _free_port()
    lines = [
        ln.replace("8080", str(port)) for ln in _block("Quick start") if not ln.startswith("pip install")
    ]
    wait = f"until {sys.executable} -c \"import socket; socket.create_connection(('127.0.0.1', {port}))\" 2>/dev/null; do sleep 0.1; done"  # noqa: E501
    sim_at = next(i for i, ln in enumerate(lines) if ln.startswith("vobiz-harvest sim"))
    lines.insert(sim_at + 1, wait)
    script = "set -e\ntrap 'kill %1 2>/dev/null' EXIT\n" + "\n".join(lines) + "\n"
    done = _run_group(["bash", "-c", script], tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accounts" in done.stdout and "Dry run" in done.stdout
    assert "COMPLETE (exit 0)" in done.stderr
    assert re.search(r"│\s+count_star\(\)\s+│", done.stdout) or "count_star()" in done.stdout
    # The summary's query line is a command that works with what pip installed.
    query = next(ln for ln in done.stderr.splitlines() if ln.strip().startswith("query"))
    command = query.split("query", 1)[1].strip()
    assert command.startswith("python -c")
    ran = subprocess.run(
        command, shell=True, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0 and "count_star()" in ran.stdout, ran.stderr
