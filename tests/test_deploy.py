"""deploy/, Dockerfile and docker-compose.yml, checked without Docker: promtool on the Prometheus config and
the alert rules (and their unit tests), nginx on its config and in front of two real replicas, the compose
file's references, the dashboard's and the rules' metric names against what the service exports.

promtool (Debian package `prometheus`) and nginx: `make test` run as root installs them (as CI does);
elsewhere, the checks that need a missing one are skipped, and the run says so before its first test.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from app.main import create_app
from tests.app.payloads import make_settings, predict_body
from tests.programs import which
from tools.process import ServerProcess, free_port, serving

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
SEVERITIES = {"info", "warning", "critical", "page"}
# exported by the learner (issue 4); the rules and the dashboard already use them
LEARNING = {
    "cpe_learning_steps_total",
    "cpe_learning_rollbacks_total",
    "cpe_learning_step_seconds",
    "cpe_learning_validation_loss",
    "cpe_learning_last_step_timestamp_seconds",
}
METRIC_NAME = re.compile(r"\b(?:cpe|http|process|python)_[a-z0-9_]+\b")


def _tool(name: str, package: str) -> str:
    path = which(name)
    assert path is not None, f"{name} is not installed: `apt-get install {package}` (scripts/test-deps.sh)"
    return path


def _run(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


# -- Prometheus -------------------------------------------------------------------------------------
@pytest.mark.tool("promtool")
def test_promtool_checks_the_config_and_the_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    out = _run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS" in out and "alerts.yml" in out  # the rule file was found and checked with it
    _run(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))


@pytest.mark.tool("promtool")
def test_every_alert_has_a_severity_and_a_passing_unit_test() -> None:
    promtool = _tool("promtool", "prometheus")
    rules = [rule for group in _yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]
    alerts = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    assert set(alerts.values()) == SEVERITIES
    cases = [
        case for test in _yaml(PROMETHEUS / "alerts_test.yml")["tests"] for case in test["alert_rule_test"]
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert firing == set(alerts), f"alerts without a test that fires them: {set(alerts) - firing}"
    out = _run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_rules_and_dashboard_name_only_metrics_the_service_exports() -> None:
    with TestClient(create_app(make_settings(models=("lstm",), model="lstm"))) as client:
        client.post("/v1/predict", json=predict_body(4))
        exposition = client.get("/metrics").text
    exported = set(re.findall(r"^(?:# TYPE )?([a-z_:][a-z0-9_:]*)", exposition, re.MULTILINE))
    known = exported | LEARNING | {f"{n}_{s}" for n in LEARNING for s in ("bucket", "sum", "count")}
    # on CUDA only; the names are checked by tests/app/test_metrics.py
    known |= {"cpe_gpu_memory_allocated_bytes", "cpe_gpu_memory_reserved_bytes", "cpe_gpu_memory_total_bytes"}
    known |= {"http_request_duration_seconds_bucket", "http_request_duration_seconds_count"}
    rules = (PROMETHEUS / "alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cpe.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for source, text in (("alerts.yml", rules), ("cpe.json", "\n".join(exprs))):
        unknown = set(METRIC_NAME.findall(text)) - known
        assert not unknown, f"{source} names metrics nobody exports: {sorted(unknown)}"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("latency", "requests", "batch", "cache", "learning", "subscribers", "memory"):
        assert topic in titles, topic


# -- docker-compose -------------------------------------------------------------------------------------
def test_compose_parses_and_everything_it_mounts_or_builds_exists() -> None:
    compose = _yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert {"redis", "cpe-1", "cpe-2", "nginx", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} mounts an undeclared volume {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
    for replica in ("cpe-1", "cpe-2"):
        service = services[replica]
        assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
        assert service["env_file"] == [{"path": ".env", "required": False}]  # the one .env
        assert service["environment"]["CPE_CACHE_URL"].startswith("redis://redis:")
        assert service["environment"]["CPE_BUS_URL"].startswith("redis://redis:")
    # nginx and Prometheus reach the replicas by their service names
    upstreams = re.findall(r"server (\S+):8000", (DEPLOY / "nginx" / "nginx.conf").read_text())
    scraped = _yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(upstreams) == sorted(t.split(":")[0] for t in scraped) == ["cpe-1", "cpe-2"]


def test_dockerfile_is_multi_stage_non_root_cpu_torch_first_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in dockerfile.splitlines() if line and line[0].isupper()]
    assert instructions.count("FROM") == 2
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile  # a CUDA base is a --build-arg away
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile and "whl/cpu" in dockerfile
    assert dockerfile.index('"torch==${TORCH_VERSION}"') < dockerfile.index("RUN pip install .")
    user = re.search(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user is not None and user.group(1).split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:1] == ["*"]  # everything out but what is listed back in
    for needed in ("!app/", "!models/", "!pyproject.toml", "!setup.py"):
        assert needed in ignored
    # the C reader of prediction bodies is built (it is optional to pip) and checked
    assert "gcc" in dockerfile and "import app.main, models.checkpoint, app.wire._json_reader" in dockerfile


# -- nginx ------------------------------------------------------------------------------------------------
def _local_nginx_conf(tmp: Path, listen: int, replicas: list[int]) -> Path:
    """deploy/nginx/nginx.conf with the compose host names and port replaced by local ones."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    for i, port in enumerate(replicas, start=1):
        conf = conf.replace(f"server cpe-{i}:8000", f"server 127.0.0.1:{port}")
    assert "cpe-1" not in conf and "cpe-2" not in conf
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


@pytest.mark.tool("nginx")
def test_nginx_accepts_the_config() -> None:
    nginx = _tool("nginx", "nginx")
    with tempfile.TemporaryDirectory() as tmp:
        conf = _local_nginx_conf(Path(tmp), free_port(), [free_port(), free_port()])
        _run(nginx, "-t", "-q", "-c", str(conf), "-p", tmp, "-e", "stderr", "-g", f"pid {tmp}/nginx.pid;")


@dataclass
class Balanced:
    proxy: str  # host:port of nginx
    replicas: list[str]  # their base URLs
    logs: list[IO[bytes]]  # their stdout and stderr: JSON lines


@pytest.fixture(scope="module")
def balanced() -> Iterator[Balanced]:
    """nginx with the deploy config in front of two real `cpe serve` replicas that log JSON."""
    nginx = _tool("nginx", "nginx")
    settings = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LOG_FORMAT": "json",
        "CPE_ACCESS_LOG": "true",
    }
    listen = free_port()
    with serving(settings, 2) as replicas, tempfile.TemporaryDirectory() as tmp:
        conf = _local_nginx_conf(Path(tmp), listen, [replica.port for replica in replicas])
        argv = [nginx, "-c", str(conf), "-p", tmp, "-e", "stderr", "-g", f"daemon off; pid {tmp}/nginx.pid;"]
        with ServerProcess(argv, listen, name="nginx") as proxy:
            proxy.wait_ready()
            yield Balanced(
                f"127.0.0.1:{listen}",
                [replica.url for replica in replicas],
                [replica.log for replica in replicas],
            )


@pytest.mark.tool("nginx")
@pytest.mark.server
def test_nginx_spreads_requests_over_both_replicas_and_keeps_request_ids(balanced: Balanced) -> None:
    with httpx.Client(base_url=f"http://{balanced.proxy}") as client:
        for n in range(1, 21):
            response = client.post("/v1/predict", json=predict_body(n), headers={"X-Request-ID": f"lb-{n}"})
            assert response.status_code == 200 and response.headers["x-request-id"] == f"lb-{n}"
        generated = client.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), generated  # nginx's $request_id, passed on
        assert client.get("/metrics").status_code == 404  # Prometheus scrapes the replicas themselves
    served = [httpx.get(f"{url}/v1/stats").json()["predictions"] for url in balanced.replicas]
    assert sum(served) == 20 and min(served) > 0, served

    # each replica logged JSON lines, its access lines with the ids that came through nginx
    access = []
    for log in balanced.logs:
        log.seek(0)
        lines = [json.loads(line) for line in log.read().decode().splitlines() if line.strip()]
        assert any(line["logger"] == "cpe" and line["message"].startswith("loaded lstm-") for line in lines)
        access += [
            line for line in lines if line["logger"] == "uvicorn.access" and line["path"] == "/v1/predict"
        ]
    assert sorted(line["request_id"] for line in access) == sorted(f"lb-{n}" for n in range(1, 21))
    assert access[0] | {"ts": None, "client": None, "request_id": None, "message": None} == {
        "ts": None,
        "level": "info",
        "logger": "uvicorn.access",
        "message": None,
        "request_id": None,
        "client": None,
        "method": "POST",
        "path": "/v1/predict",
        "http_version": "1.1",
        "status": 200,
    }


@pytest.mark.tool("nginx")
@pytest.mark.server
def test_nginx_upgrades_websockets_to_a_replica(balanced: Balanced) -> None:
    with connect(f"ws://{balanced.proxy}/v1/stream/routing") as ws:
        ws.send(json.dumps({"op": "subscribe", "types": ["RoutingPrediction"]}))
        ack = json.loads(ws.recv(timeout=5))
    assert ack["op"] == "subscribed"


def _yaml(path: Path) -> dict:  # type: ignore[type-arg]
    with path.open() as f:
        return yaml.safe_load(f)  # type: ignore[no-any-return]
