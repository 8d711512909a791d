"""What a user types, and what an operator sees when a run fails (issue #14, classes 11-13):
every bad value is one line naming it, exit 2, before anything is written; a fatal error is
one line on stderr even under ``--quiet`` and reaches ``--log-file``; exit codes depend on
what went wrong, never on flags."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest

from harvester.sim import SimConfig
from tests.conftest import PAST, cli, dataset, sim_args, sim_env

PASSWORD = "hunter2-very-secret"

BAD_INPUT = [
    (["--out", ""], "--out is empty"),
    (["--progress-interval", "0"], "--progress-interval 0"),
    (["--retries", "-1"], "--retries -1"),
    (["--verify-attempts", "0"], "--verify-attempts 0"),
    (["--max-runtime", "0"], "--max-runtime 0"),
    (["--connect-timeout", "0"], "--connect-timeout 0"),
    (["--rate", "0"], "--rate 0"),
    (["--max-body-mb", "0"], "--max-body-mb 0"),
    (["--customer", ""], "--customer is empty"),
    (["--customer", "MA_A,MA_B"], "repeat --customer"),
    (["--customer", ".."], "--customer '..'"),
    (["--customer", "a/../b"], "--customer 'a/../b'"),
    (["--customer", "MA_NOT_A_CUSTOMER"], "not in this partner's listing"),
    (["--base-url", "{url}/api/v1"], "has a path"),
    (["--base-url", "http://admin:" + PASSWORD + "@{host}"], "carries a user or password"),
]


@pytest.mark.parametrize(("extra", "says"), BAD_INPUT, ids=[a[1] for a in BAD_INPUT])
async def test_bad_input_is_one_line_and_exit_2(
    start_sim, tmp_path: Path, extra: list[str], says: str
) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=1, calls_per_day=20, end_date=PAST)))
    host = sim.base_url.split("://", 1)[1]
    extra = [a.replace("{url}", sim.base_url).replace("{host}", host) for a in extra]
    out = tmp_path / "lake"
    code, stdout, err = await cli(*sim_args(sim, out), *extra, "--quiet", env=sim_env(sim))
    assert code == 2, err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err
    assert PASSWORD not in err + stdout
    assert not out.exists()
    assert sim.stats["requests"] <= 1  # at most the listing, to check a --customer against it


async def test_exit_codes_do_not_depend_on_flags(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"VOBIZ_AUTH_ID": "PA_X", "VOBIZ_AUTH_TOKEN": "t0ken"}
    for retries in ("8", "1", "0"):
        args = ["harvest", "--base-url", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "l")]
        code, _, err = await cli(*args, "--retries", retries, "--scope", "global", env=env)
        assert code == 4, (retries, err)
        assert err.strip().count("\n") == 0 and "cannot connect to 127.0.0.1" in err
        assert not (tmp_path / "l").exists()


async def test_a_failed_night_is_visible(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=1, calls_per_day=20, end_date=PAST)))
    log = tmp_path / "night.log"
    out = tmp_path / "lake"
    wrong = sim_env(sim, VOBIZ_AUTH_TOKEN="wrong-token")
    code, stdout, err = await cli(*sim_args(sim, out, "--quiet", "--log-file", str(log)), env=wrong)
    assert code == 3 and stdout == ""
    assert err.count("\n") == 1 and "HTTP 401" in err
    text = log.read_text()
    assert "run start" in text and "run end: error (exit 3)" in text and "wrong-token" not in text
    assert not out.exists(), "a run that harvested nothing left a lake folder"
    ok_log = tmp_path / "ok.log"
    code, _, err = await cli(*sim_args(sim, out, "--quiet", "--log-file", str(ok_log)), env=sim_env(sim))
    assert code == 0 and err == ""
    lines = ok_log.read_text().splitlines()
    assert "run start" in lines[0] and "run end: complete (exit 0)" in lines[-1]


async def test_demo_into_another_lake_prints_no_table(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=20, end_date=PAST)))
    out = tmp_path / "lake"
    code, _, _ = await cli(*sim_args(sim, out, "--scope", "global", "--quiet"), env=sim_env(sim))
    assert code == 0
    code, stdout, err = await cli("demo", "--out", str(out))
    assert code == 2 and stdout == "" and "scope=global" in err and "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error:" in ln] == [err.splitlines()[-1]]


async def test_simulator_flags_are_checked(tmp_path: Path) -> None:
    code, _, err = await cli("sim", "--days", "0")
    assert code == 2 and "--days 0" in err and "Traceback" not in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = await cli("sim", "--port", str(port), timeout=30)
    assert code == 2 and f":{port}" in err and "choose another --port" in err and "Traceback" not in err


async def test_listed_ids_are_never_trusted_in_json_and_table(start_sim, tmp_path: Path) -> None:
    """The accounts command prints listed names without their escape codes."""
    from aiohttp import web

    from tests.hostile import Hostile, answer

    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=1, calls_per_day=5, end_date=PAST)))

    async def names(h: Hostile, request: web.Request) -> web.StreamResponse | None:
        doc = await h.honest_doc(request)
        doc["accounts"][0]["name"] = "evil\x1b[2J\nname"
        doc["accounts"].append({"auth_id": "../x", "name": "y"})
        doc["total"] += 1
        return answer(doc)

    hostile = Hostile(sim, names)
    url = await hostile.start()
    try:
        code, stdout, err = await cli("accounts", "--base-url", url, env=sim_env(sim))
        jcode, jout, _ = await cli("accounts", "--json", "--base-url", url, env=sim_env(sim))
    finally:
        await hostile.stop()
    assert code == 1 and jcode == 1, err
    assert "\x1b" not in stdout and "evil [2J name" in stdout and "'../x'" in err
    assert {a["auth_id"] for a in orjson.loads(jout)} == {c.auth_id for c in sim.data.customer_list}
