"""compose/ and compose/k8s/ cannot run here (no Docker): check they parse and refer only to
real things: llmspool commands, LLMSPOOL_ settings, models, Redis names, files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from llmspool.control.cli import app as cli_app
from llmspool.shared import keys
from llmspool.shared.config import parse_config
from llmspool.shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
K8S = COMPOSE / "k8s"
DEPLOY_FILES = sorted(
    [*COMPOSE.glob("Dockerfile*"), *COMPOSE.glob("*.yml"), *K8S.glob("*.yaml"), K8S / "README.md"]
)


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE / "docker-compose.yml")[0]
    return data


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path)]


def test_every_yaml_file_parses() -> None:
    for path in [*COMPOSE.glob("*.yml"), *K8S.glob("*.yaml")]:
        assert load_yaml(path), path


def _commands(text: str) -> list[list[str]]:
    """`llmspool …` invocations, in shell form or in YAML/JSON exec form."""
    shell = r"(?:`|exec \S+ |-- |RUN |&& )llmspool ((?:[a-z-]+ ?){1,2})"
    found = [m.split() for m in re.findall(shell, text)]
    for match in re.findall(r'\["llmspool",([^\]]*)\]', text):
        found.append(re.findall(r'"([^"]+)"', match))
    return found


def test_commands_exist() -> None:
    root: Any = typer.main.get_command(cli_app)
    seen = 0
    for path in DEPLOY_FILES:
        for words in _commands(path.read_text()):
            command = root.commands.get(words[0])
            assert command is not None, f"{path.name}: no command 'llmspool {words[0]}'"
            if hasattr(command, "commands") and len(words) > 1:
                assert words[1] in command.commands, f"{path.name}: llmspool {' '.join(words)}"
            seen += 1
    assert seen >= 6


def test_settings_exist() -> None:
    fields = {f"LLMSPOOL_{name.upper()}" for name in Settings.model_fields}
    for path in DEPLOY_FILES:
        for name in set(re.findall(r"LLMSPOOL_[A-Z_]+", path.read_text())):
            assert name in fields, f"{path.name}: {name} is not a setting"


def test_redis_names_and_metrics_are_real() -> None:
    """Every `llmspool:<name>` the files mention is built somewhere in the source."""
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    for path in DEPLOY_FILES:
        for name in set(re.findall(r"llmspool:([a-z][a-z_]*)\b(?![{:-])", path.read_text())):
            assert name in source, f"{path.name}: llmspool:{name} appears nowhere in src/"


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"redis", "api", "worker", "worker-vllm", "prometheus", "grafana"} <= set(services)
    assert services["batch-worker"]["command"] == ["llmspool", "batch-worker"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["worker-vllm"]["profiles"] == ["gpu"]
    served = parse_config(tomllib.loads((COMPOSE / "llmspool.toml").read_text())).names()
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (COMPOSE / build["context"] / build["dockerfile"]).exists(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE / source).exists(), f"{name} mounts missing {source}"
        command = service.get("command", [])
        if "--model" in command and "profiles" not in service:
            assert command[command.index("--model") + 1] in served


def test_k8s_models_workers_and_scalers_agree() -> None:
    objects = k8s_objects()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    models_toml = by_kind["ConfigMap"]["llmspool-models"]["data"]["llmspool.toml"]
    models = parse_config(tomllib.loads(models_toml)).names()
    deployments = by_kind["Deployment"]
    scaled = by_kind["ScaledObject"]
    assert "llmspool-api" in deployments and "llmspool-api" in by_kind["Service"]
    batch = deployments["llmspool-batch-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert batch["command"] == ["llmspool", "batch-worker"]
    secret = by_kind["Secret"]["llmspool-redis"]["stringData"]
    for deployment in deployments.values():  # every Redis URL a pod reads is in the Secret
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secret, (deployment["metadata"]["name"], ref)
    for model in models:
        worker = deployments[f"llmspool-worker-{model}"]
        container = worker["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["llmspool", "worker", "--model", model]
        triggers = {t["name"]: t for t in scaled[f"llmspool-worker-{model}"]["spec"]["triggers"]}
        assert all(t["type"] == "redis-streams" for t in triggers.values())
        for stream in keys.model_streams(model):  # as control/keda.py writes them
            kind = stream.rsplit(":", 1)[-1]
            waiting = triggers[f"{kind}-waiting"]["metadata"]
            assert waiting["stream"] == keys.waiting(stream)
            assert int(waiting["streamLength"]) >= 1 and waiting["activationLagCount"] == "0"
            lag, pending = (
                triggers[f"{kind}-lag"]["metadata"],
                triggers[f"{kind}-pending"]["metadata"],
            )
            assert lag["stream"] == pending["stream"] == stream
            assert lag["consumerGroup"] == pending["consumerGroup"] == keys.GROUP
            assert int(lag["lagCount"]) >= 1 and int(pending["pendingEntriesCount"]) >= 1
        target = scaled[f"llmspool-worker-{model}"]["spec"]["scaleTargetRef"]["name"]
        assert target in deployments


@pytest.mark.parametrize("path", sorted(COMPOSE.glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfiles_copy_real_paths(path: Path) -> None:
    for line in path.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source}"
