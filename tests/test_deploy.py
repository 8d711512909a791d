"""The Kubernetes manifests in deploy/k8s/ say what the harvester accepts: each Job's command
parses with the real command line, and an Indexed Job has as many parts as completions."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from harvester.cli.main import build_parser
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "k8s"


def _jobs() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "Job":
                found.append((path, doc["spec"]))
            elif doc["kind"] == "CronJob":
                found.append((path, doc["spec"]["jobTemplate"]["spec"]))
    return found


def test_every_job_runs_a_command_the_harvester_accepts() -> None:
    jobs = _jobs()
    assert len(jobs) == 2
    for path, spec in jobs:
        container = spec["template"]["spec"]["containers"][0]
        command = container["args"][0].split("&&")[-1]
        argv = shlex.split(command)
        assert argv[0] == "vobiz-harvest", path
        args = build_parser().parse_args(argv[1:])  # exits (fails the test) on a flag it lacks
        assert spec["completionMode"] == "Indexed" and args.partitions == spec["completions"], path
        assert {"secretRef": {"name": "vobiz-harvester"}} in container["envFrom"], path
        assert str(args.out).startswith("s3://"), path
        assert args.rate_store == "redis://vobiz-redis:6379/0", path
