"""deploy/, checked offline: no Docker, no Kubernetes, no network.

Each file is checked by a maintained tool the dev extra installs: the compose file against the
Compose specification's JSON Schema (check-jsonschema's vendored copy), the kustomize overlays
rendered by kubectl's kustomize and validated against the JSON Schemas of Kubernetes
KUBERNETES_VERSION (kubernetes-validate, strict: an unknown field fails), the Containerfile by
hadolint. Around them, what only this project knows: every ORDERSAGA_* name in deploy/ is a
setting of ordersaga/settings.py (walked from the model, so a new setting needs no change here),
every command a container runs is a command of the CLI, every Helm value is one the chart reads,
the pieces agree with each other (secrets, images, replicas, probes), and credentials stay out
of the configuration: no URL carries a password, every secret setting comes from a Secret or
deploy/.env, and every Secret key, Secret volume and ${VAR} used is one the examples document.
"""

from __future__ import annotations

import dataclasses
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, Union
from urllib.parse import parse_qsl, urlsplit

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import typer.main
import yaml
from pydantic import BaseModel

from cli.main import app
from ordersaga.settings import SETTINGS_JSON_VAR, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HELM = DEPLOY / "helm"
COMPOSE = DEPLOY / "compose.yaml"
CONTAINERFILE = DEPLOY / "Containerfile"
PROBE = DEPLOY / "probe.py"

# The Kubernetes version whose schemas the manifests must satisfy: the oldest minor version we
# support (a field added later fails here).
KUBERNETES_VERSION = "1.34.0"
OVERLAYS = ("dev", "prod")
# The processes, their CLI command, and how many of each the compose file runs (the shape).
PROCESSES = {"api": 2, "worker": 2, "relay": 1, "projector": 2, "notifier": 1}

Doc = dict[str, Any]


# -- helpers --------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A binary the dev extra installs next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        if sys.platform != "linux":
            pytest.skip(f"{name} has no wheel for this platform")
        pytest.fail(f"{name} is missing: install the dev extra (make setup)")
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    """The overlay as `kubectl apply -k` would send it."""
    result = run(tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay))
    assert result.returncode == 0, f"kustomize {overlay}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    found: list[Doc] = pod_spec(workload)["containers"]
    return found


def example_secret_docs() -> list[Doc]:
    return [doc for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if doc]


def example_secrets() -> dict[str, dict[str, str]]:
    """Secret name -> its keys and placeholder values, from deploy/k8s/secrets.example.yaml."""
    return {doc["metadata"]["name"]: doc["stringData"] for doc in example_secret_docs()}


def compose() -> Doc:
    loaded: Doc = load_yaml(COMPOSE)
    return loaded


def compose_services() -> dict[str, Doc]:
    services: dict[str, Doc] = compose()["services"]
    return services


def ordersaga_services() -> dict[str, Doc]:
    return {
        name: service
        for name, service in compose_services().items()
        if str(service.get("image", "")).startswith("ordersaga:")
    }


# -- the settings ---------------------------------------------------------------------------------


def _nested(annotation: Any) -> type | None:
    """The model or dataclass a field holds (through Optional), or None for a plain value."""
    candidates = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (Union, types.UnionType)
        else (annotation,)
    )
    for candidate in candidates:
        if isinstance(candidate, type) and (
            issubclass(candidate, BaseModel) or dataclasses.is_dataclass(candidate)
        ):
            return candidate
    return None


def _fields(model: type) -> Iterator[tuple[str, Any, bool]]:
    """Each field of a model or dataclass: its name, its annotation, and whether it is a secret
    (the settings keep secrets out of repr)."""
    if issubclass(model, BaseModel):
        for name, info in model.model_fields.items():
            yield name, info.annotation, info.repr is False
    else:
        hints = typing.get_type_hints(model)
        for field in dataclasses.fields(typing.cast(Any, model)):
            yield field.name, hints[field.name], field.repr is False


@cache
def _walk_settings() -> tuple[frozenset[str], frozenset[str]]:
    names = {SETTINGS_JSON_VAR}
    secrets = set()

    def walk(prefix: str, model: type) -> None:
        for name, annotation, secret in _fields(model):
            variable = prefix + name.upper()
            names.add(variable)
            if secret:
                secrets.add(variable)
            nested = _nested(annotation)
            if nested is not None:
                walk(variable + "__", nested)

    walk(Settings.model_config.get("env_prefix", ""), Settings)
    return frozenset(names), frozenset(secrets)


def setting_names() -> frozenset[str]:
    """Every environment variable Settings reads: ORDERSAGA_<SECTION>__<KEY>, at any depth (a
    section's own name takes JSON), walked from the model itself."""
    return _walk_settings()[0]


def secret_setting_names() -> frozenset[str]:
    """The settings that are secrets (passwords, tokens, API keys): those kept out of repr."""
    return _walk_settings()[1]


SETTING_NAME = re.compile(r"\bORDERSAGA_[A-Z0-9_]*[A-Z0-9]")
INTERPOLATION = re.compile(r"\$\{[^}]*\}")


def test_the_settings_walk_finds_nested_sections() -> None:
    names = setting_names()
    for expected in (
        "ORDERSAGA_DATABASE__URL",
        "ORDERSAGA_NATS__REPLICAS",
        "ORDERSAGA_SAGA__STEP_BUDGET_S",  # a dataclass section
        "ORDERSAGA_LOG_LEVEL",
    ):
        assert expected in names
    assert "ORDERSAGA_NATS__REPLICA" not in names


def test_the_settings_walk_finds_the_secrets() -> None:
    secrets = secret_setting_names()
    for expected in (
        "ORDERSAGA_DATABASE__PASSWORD",
        "ORDERSAGA_NATS__PASSWORD",
        "ORDERSAGA_NATS__TOKEN",
        "ORDERSAGA_NOTIFIER__API_KEY",
        "ORDERSAGA_TEMPORAL__API_KEY",
    ):
        assert expected in secrets
    for plain in ("ORDERSAGA_DATABASE__URL", "ORDERSAGA_NATS__URL", "ORDERSAGA_NATS__USER"):
        assert plain not in secrets


def test_every_ordersaga_name_in_deploy_is_a_setting() -> None:
    """Every ORDERSAGA_* name written anywhere under deploy/ (manifests, env files, the
    Containerfile, the probe, comments) names a setting: a typo fails here, where
    pydantic-settings would silently ignore it."""
    unknown: dict[str, set[str]] = {}
    seen = 0
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix in {".pyc"}:
            continue
        for name in SETTING_NAME.findall(path.read_text(errors="replace")):
            seen += 1
            if name not in setting_names():
                unknown.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert seen > 50, "deploy/ sets hardly any settings: is the pattern still right?"
    assert not unknown, f"not settings of ordersaga/settings.py: {unknown}"


def _settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for variable in list(os.environ):
        if variable.startswith("ORDERSAGA_"):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return Settings()


def _k8s_environments(overlay: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each ordersaga container of an overlay and the ORDERSAGA_* environment it gets, with
    the example Secret's placeholders for what comes from a Secret."""
    docs = rendered(overlay)
    config_maps = {
        doc["metadata"]["name"]: doc.get("data", {}) for doc in of_kind(docs, "ConfigMap")
    }
    secrets = example_secrets()
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for container in containers(workload):
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            for variable in container.get("env", []):
                if "value" in variable:
                    env[variable["name"]] = variable["value"]
                else:
                    ref = variable["valueFrom"]["secretKeyRef"]
                    env[variable["name"]] = secrets[ref["name"]][ref["key"]]
            yield f"{overlay}/{workload['metadata']['name']}/{container['name']}", env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_kubernetes_container_gets_valid_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names and values: the settings each container is given load (types, ranges, pairs)."""
    checked = 0
    for where, env in _k8s_environments(overlay):
        with monkeypatch.context() as patch:
            settings = _settings_from(env, patch)
        assert settings.temporal.namespace == "ordersaga", where
        assert settings.nats.replicas == 3, where
        # The user from the ConfigMap, its password from the Secret; three seed servers.
        assert settings.nats.user and settings.nats.password, where
        assert len(settings.nats_url().split(",")) == 3, where
        assert urlsplit(settings.database_url()).password is None, where
        # Postgres over TLS in production, verified against the mounted CA bundle.
        assert settings.database.tls.on is (overlay == "prod"), where
        checked += 1
    assert checked >= len(PROCESSES) + 2


def test_each_compose_container_gets_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in ordersaga_services().items():
        env = {
            variable: INTERPOLATION.sub("secret", str(value))
            for variable, value in service["environment"].items()
            if variable.startswith("ORDERSAGA_")
        }
        with monkeypatch.context() as patch:
            settings = _settings_from(env, patch)
        assert settings.nats.replicas == 3, name
        assert settings.nats_url().count("nats://") == 3, name
        assert settings.nats.user and settings.nats.password, name
        assert settings.database.password, name


# -- the CLI commands the containers run ----------------------------------------------------------


def assert_cli_command(argv: list[str], where: str) -> None:
    """argv (after `ordersaga`) names a command of the CLI and parses as its arguments.
    (Typer carries its own copy of click: its commands are looked at by what they have.)"""
    shown = f"{where}: `ordersaga {' '.join(argv)}`"
    command: Any = typer.main.get_command(app)
    rest = list(argv)
    while hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
        sub = command.get_command(typer.Context(command), rest[0])
        assert sub is not None, f"{shown}: no command {rest[0]!r}"
        command = sub
        rest.pop(0)
    if hasattr(command, "get_command"):
        assert command.invoke_without_command, f"{shown}: a group, not a command"
    try:
        command.make_context("ordersaga", rest)
    except Exception as error:  # the CLI's usage errors
        raise AssertionError(f"{shown}: {error}") from error


def test_cli_check_catches_a_wrong_command() -> None:
    assert_cli_command(["bus", "setup"], "here")
    assert_cli_command(["relay"], "here")
    for wrong in (["bus"], ["bus", "set-up"], ["workers"], ["migrate", "--frobnicate"]):
        with pytest.raises(AssertionError):
            assert_cli_command(wrong, "here")


def _compose_argv(service: Doc) -> list[str]:
    command = service["command"]
    if service.get("entrypoint"):  # a shell guard that ends in `exec ordersaga ...`
        found = re.search(r"exec ordersaga ([^;&|]+)$", " ".join(command).strip())
        assert found, f"the shell command does not end in `exec ordersaga ...`: {command}"
        return found.group(1).split()
    assert isinstance(command, list)
    return [str(part) for part in command]


def test_compose_runs_commands_of_the_cli() -> None:
    for name, service in ordersaga_services().items():
        assert_cli_command(_compose_argv(service), f"compose service {name}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_runs_commands_of_the_cli(overlay: str) -> None:
    docs = rendered(overlay)
    ran = set()
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for container in containers(workload):
            assert "command" not in container, "the image's entrypoint is `ordersaga`"
            assert_cli_command(container["args"], f"{overlay} {workload['metadata']['name']}")
            ran.add(" ".join(container["args"]))
    assert ran == {*PROCESSES, "migrate", "bus setup"}


# -- the compose file -----------------------------------------------------------------------------


def test_compose_file_satisfies_the_compose_specification() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_references_resolve() -> None:
    spec = compose()
    services = spec["services"]
    volumes = set(spec.get("volumes", {}))
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"


def test_compose_runs_each_process_with_its_replicas_and_a_healthcheck() -> None:
    services = compose_services()
    for process, replicas in PROCESSES.items():
        assert services[process]["deploy"]["replicas"] == replicas, process
        assert services[process]["healthcheck"]["test"][-2:] == ["/opt/ordersaga/probe.py", process]
    for server in ("postgres", "temporal", "nats-1", "nats-2", "nats-3"):
        assert services[server]["healthcheck"]["test"], server


def test_compose_nats_is_a_three_node_jetstream_cluster() -> None:
    conf = (DEPLOY / "compose" / "nats.conf").read_text()
    nodes = [name for name in compose_services() if name.startswith("nats-")]
    assert len(nodes) == 3
    for node in nodes:
        assert f"nats://{node}:6222" in conf
    assert re.search(r"jetstream\s*\{[^}]*store_dir", conf)


def test_compose_temporal_setup_creates_the_sagas_search_attributes() -> None:
    from ordersaga.domain import SEARCH_ATTRIBUTES

    script = (DEPLOY / "compose" / "temporal-namespace.sh").read_text()
    for key in SEARCH_ATTRIBUTES:
        assert key.name in script
    services = compose_services()
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal-namespace"]["environment"]["NAMESPACE"] == "ordersaga"


def test_compose_secrets_come_from_the_env_file() -> None:
    """No literal secret: each one is `${VAR}` from deploy/.env, and .env.example lists it."""
    text = COMPOSE.read_text()
    listed = set(re.findall(r"^([A-Z_]+)=", (DEPLOY / ".env.example").read_text(), re.M))
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert used and used <= listed, f"not in .env.example: {used - listed}"
    secret = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|API_KEY")
    for name, service in compose_services().items():
        for variable, value in (service.get("environment") or {}).items():
            value = str(value)
            if secret.search(variable):
                assert INTERPOLATION.fullmatch(value), f"{name}: {variable} is a literal"
            for userinfo in re.findall(r"://([^@/]+)@", value):
                password = userinfo.partition(":")[2]
                assert not password or INTERPOLATION.search(password), (
                    f"{name}: {variable} has a literal password"
                )


# -- the Kubernetes manifests ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_satisfies_the_kubernetes_schemas(overlay: str) -> None:
    errors = []
    for doc in rendered(overlay):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    assert not errors, "\n".join(errors)


def test_example_secrets_satisfy_the_kubernetes_schemas() -> None:
    for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_manifests_use_no_custom_resources() -> None:
    """CRDs would need their own schemas; there are none to check (kubernetes-validate knows
    only the built-in kinds and fails on any other)."""
    for overlay in OVERLAYS:
        for doc in rendered(overlay):
            group = doc["apiVersion"].rpartition("/")[0]
            assert group in {"", "apps", "batch", "policy"}, doc["apiVersion"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_is_a_probed_deployment_with_requests_and_a_budget(overlay: str) -> None:
    docs = rendered(overlay)
    deployments = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in of_kind(docs, "Deployment")
    }
    assert set(deployments) == set(PROCESSES)
    budgets = of_kind(docs, "PodDisruptionBudget")
    for role, deployment in deployments.items():
        [container] = containers(deployment)
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), role
        assert "memory" in container["resources"]["limits"], role
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, role
        assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True, role
        readiness = container["readinessProbe"]
        if role == "api":
            assert readiness["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        else:
            assert readiness["exec"]["command"][-2:] == ["/opt/ordersaga/probe.py", role]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b
            for b in budgets
            if b["metadata"].get("namespace") == deployment["metadata"].get("namespace")
            and b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, f"{role}: {len(covering)} disruption budgets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_references_resolve(overlay: str) -> None:
    """Every Secret key referenced is one the example Secret documents; every ConfigMap
    referenced is in the overlay; every Service selects pods."""
    docs = rendered(overlay)
    secrets = example_secrets()
    config_maps = {doc["metadata"]["name"] for doc in of_kind(docs, "ConfigMap")}
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        assert pod_spec(workload)["serviceAccountName"] in {
            d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")
        }
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in secrets, (
                    f"volume {volume['name']}: Secret {name} not in the examples"
                )
                for item in volume["secret"].get("items", []):
                    assert item["key"] in secrets[name], f"volume {volume['name']}: {item}"
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, source
                else:
                    assert source["configMapRef"]["name"] in config_maps
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), ref
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment")]
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pods), service["metadata"]["name"]


def _secret_keys_used(docs: tuple[Doc, ...]) -> set[tuple[str, str]]:
    """(Secret, key) of every Secret key a workload reads, as a variable or a mounted file."""
    secrets = example_secrets()
    used: set[tuple[str, str]] = set()
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                items = volume["secret"].get("items")
                keys = [item["key"] for item in items] if items else list(secrets.get(name, {}))
                used.update((name, key) for key in keys)
        for container in containers(workload):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
    return used


def test_every_key_of_ordersagas_example_secrets_is_used() -> None:
    """The other way round: the examples document no key that no overlay reads (a leftover
    such as a URL that moved to the ConfigMap). The Secrets of other namespaces belong to the
    charts' values, checked with them."""
    used = set().union(*(_secret_keys_used(rendered(overlay)) for overlay in OVERLAYS))
    for doc in example_secret_docs():
        if "namespace" in doc["metadata"]:
            continue
        for key in doc["stringData"]:
            assert (doc["metadata"]["name"], key) in used, (
                f"unused: {doc['metadata']['name']}/{key}"
            )


def test_overlays_change_what_they_mean_to() -> None:
    """kustomize passes over a patch whose target selects nothing: check that each overlay's
    replicas, namespace and patches took effect."""
    for overlay in OVERLAYS:
        kustomization = load_yaml(K8S / "overlays" / overlay / "kustomization.yaml")
        deployments = {d["metadata"]["name"]: d for d in of_kind(rendered(overlay), "Deployment")}
        for entry in kustomization.get("replicas", []):
            assert deployments[entry["name"]]["spec"]["replicas"] == entry["count"], entry
        for doc in rendered(overlay):
            assert (
                doc["metadata"].get("namespace", kustomization["namespace"])
                == kustomization["namespace"]
            )
    dev = of_kind(rendered("dev"), "Deployment")
    assert all(containers(d)[0]["resources"]["requests"]["cpu"] == "50m" for d in dev)
    prod = of_kind(rendered("prod"), "Deployment")
    for deployment in prod:
        keys = [c["topologyKey"] for c in pod_spec(deployment)["topologySpreadConstraints"]]
        assert "topology.kubernetes.io/zone" in keys, deployment["metadata"]["name"]
    # The Postgres CA bundle reaches every pod (the patch targets two kinds).
    for workload in prod + of_kind(rendered("prod"), "Job"):
        volumes = [v["name"] for v in pod_spec(workload)["volumes"]]
        assert "postgres-ca" in volumes, workload["metadata"]["name"]


# -- credentials ----------------------------------------------------------------------------------

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s,'\"`<>]+", re.I)
CREDENTIAL_PARAMETERS = {"password", "passwd", "pass", "pwd", "sslpassword", "token", "api_key"}


def passwords_in_urls(text: str) -> list[str]:
    """The URLs in `text` (one, a comma-separated list, or prose) that carry a password: as
    user:password@ (even a `${VAR}` from deploy/.env) or as a query parameter."""
    found = []
    for url in URL.findall(INTERPOLATION.sub("INTERPOLATED", text)):
        parts = urlsplit(url)
        parameters = {key.lower() for key, _ in parse_qsl(parts.query)}
        if parts.password is not None or parameters & CREDENTIAL_PARAMETERS:
            found.append(url)
    return found


def test_the_url_check_catches_a_password() -> None:
    for bad in (
        "postgresql+asyncpg://ordersaga:s3cret@db:5432/ordersaga",
        "postgresql+asyncpg://ordersaga:${APP_DB_PASSWORD:?set it in deploy/.env}@postgres/x",
        "nats://n0:4222,nats://ordersaga:${NATS_PASSWORD}@n1:4222",
        "nats://:s3cret@n0:4222",
        "postgresql://ordersaga@db/ordersaga?password=s3cret",
    ):
        assert passwords_in_urls(bad), bad
    for good in (
        "postgresql+asyncpg://ordersaga@db:5432/ordersaga",
        "nats://n0:4222,nats://n1:4222,nats://n2:4222",
        "temporal:7233",
        "http://ordersaga-api:8000",
        "postgresql://ordersaga@db/ordersaga?sslmode=verify-full",
    ):
        assert not passwords_in_urls(good), good


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_configuration_has_no_password_in_a_url(overlay: str) -> None:
    """The ConfigMaps and literal env values: addresses with a user at most."""
    docs = rendered(overlay)
    for config_map in of_kind(docs, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            found = passwords_in_urls(str(value))
            assert not found, f"ConfigMap {config_map['metadata']['name']}: {key} = {found}"
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for container in containers(workload):
            for variable in container.get("env", []):
                found = passwords_in_urls(str(variable.get("value", "")))
                assert not found, f"{workload['metadata']['name']}: {variable['name']} = {found}"


def test_compose_environment_has_no_password_in_a_url() -> None:
    for name, service in compose_services().items():
        for variable, value in (service.get("environment") or {}).items():
            found = passwords_in_urls(str(value))
            assert not found, f"compose {name}: {variable} = {found}"


def test_nothing_in_deploy_shows_a_password_in_a_url() -> None:
    """Not even a comment or the README: an example is copied."""
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != ".env" and path.suffix != ".pyc":
            found = passwords_in_urls(path.read_text(errors="replace"))
            assert not found, f"{path.relative_to(ROOT)}: {found}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_secret_settings_come_from_secrets(overlay: str) -> None:
    """A secret setting (one kept out of repr) is never in a ConfigMap nor a literal; the ones
    the processes need come from the Secret, and nothing else does."""
    docs = rendered(overlay)
    secret_names = secret_setting_names()
    for config_map in of_kind(docs, "ConfigMap"):
        leaked = secret_names & set(config_map.get("data", {}))
        assert not leaked, f"ConfigMap {config_map['metadata']['name']}: {leaked}"
    from_secrets = set()
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for container in containers(workload):
            for variable in container.get("env", []):
                is_secret = "secretKeyRef" in variable.get("valueFrom", {})
                if variable["name"] in secret_names:
                    assert is_secret, f"{workload['metadata']['name']}: {variable['name']}"
                if is_secret:
                    from_secrets.add(variable["name"])
    assert from_secrets == {
        "ORDERSAGA_DATABASE__PASSWORD",
        "ORDERSAGA_NATS__PASSWORD",
        "ORDERSAGA_NOTIFIER__API_KEY",
    }


def test_compose_secret_settings_come_from_the_env_file() -> None:
    secret_names = secret_setting_names()
    given = set()
    for name, service in ordersaga_services().items():
        for variable, value in service["environment"].items():
            if variable in secret_names:
                assert INTERPOLATION.fullmatch(str(value)), f"{name}: {variable} is a literal"
                given.add(variable)
    assert given == {
        "ORDERSAGA_DATABASE__PASSWORD",
        "ORDERSAGA_NATS__PASSWORD",
        "ORDERSAGA_NOTIFIER__API_KEY",
    }


def test_env_example_lists_only_what_compose_uses() -> None:
    """The other way round from test_compose_secrets_come_from_the_env_file: no leftover."""
    listed = set(re.findall(r"^([A-Z_]+)=", (DEPLOY / ".env.example").read_text(), re.M))
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    assert listed <= used, f"in .env.example, used nowhere: {listed - used}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_file_settings_point_into_mounted_volumes(overlay: str) -> None:
    """Every ORDERSAGA_..._FILE (a TLS CA, a client certificate, a NATS credentials file) is a
    path inside a read-only mount of the container, from a Secret key the examples document."""
    docs = rendered(overlay)
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")}
    secrets = example_secrets()
    checked = 0
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
            env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
            for variable, value in env.items():
                if not (variable.startswith("ORDERSAGA_") and variable.endswith("_FILE")):
                    continue
                path = PurePosixPath(value)
                mounts = [
                    m
                    for m in container.get("volumeMounts", [])
                    if path.is_relative_to(m["mountPath"])
                ]
                assert mounts, f"{where}: {variable}={value} is in no mounted volume"
                [mount] = mounts
                assert mount.get("readOnly") is True, f"{where}: {mount['name']} is writable"
                inside = str(path.relative_to(mount["mountPath"]))
                volume = volumes[mount["name"]]
                if "secret" in volume:
                    name = volume["secret"]["secretName"]
                    items = volume["secret"].get("items")
                    files = (
                        {i["path"]: i["key"] for i in items}
                        if items
                        else {k: k for k in secrets[name]}
                    )
                    assert inside in files, f"{where}: {variable}: no {inside} in {name}"
                    assert files[inside] in secrets[name], f"{where}: {name} has no {files[inside]}"
                else:
                    assert "configMap" in volume, f"{where}: {variable} from {volume}"
                checked += 1
    if overlay == "prod":
        assert checked >= len(PROCESSES) + 2, "prod: not every container verifies Postgres"


def test_connection_users_and_servers_agree() -> None:
    """The NATS user of the configuration is the servers' user, the database user is a role
    the compose Postgres makes, and the NATS seed lists name the three servers."""
    nats_auth = example_secrets()["nats-auth"]
    nats_values = helm_values("nats")[0][1]
    for overlay in OVERLAYS:
        for where, env in _k8s_environments(overlay):
            assert env["ORDERSAGA_NATS__USER"] == nats_auth["user"], where
            seeds = set(env["ORDERSAGA_NATS__URL"].split(","))
            assert len(seeds) == nats_values["config"]["cluster"]["replicas"], where
    shared = compose_services()["relay"]["environment"]
    conf = (DEPLOY / "compose" / "nats.conf").read_text()
    user = re.search(r"authorization\s*\{[^}]*\buser:\s*(\S+)", conf)
    assert user and shared["ORDERSAGA_NATS__USER"] == user.group(1)
    hosts = {urlsplit(url).hostname for url in shared["ORDERSAGA_NATS__URL"].split(",")}
    assert hosts == {name for name in compose_services() if name.startswith("nats-")}
    role = urlsplit(shared["ORDERSAGA_DATABASE__URL"]).username
    assert f"CREATE ROLE {role} LOGIN" in (DEPLOY / "compose" / "postgres-init.sh").read_text()


# -- the Containerfile ----------------------------------------------------------------------------


def test_containerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", str(CONTAINERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def _stages() -> list[list[str]]:
    """The Containerfile's instructions (continuations joined), stage by stage."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_containerfile_is_multi_stage_pinned_non_root_and_installs_nothing_at_the_end() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0].split()[1]
        assert re.search(r":\d+\.\d+\.\d+[-\w.]*(@sha256:[0-9a-f]{64})?$", image), image
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    runs = " ".join(line for line in final if line.upper().startswith("RUN "))
    for builder in ("pip install", "apt-get install", "apk add", "gcc", "build-essential"):
        assert builder not in runs, f"the final stage runs {builder}"
    assert any(line.startswith('ENTRYPOINT ["ordersaga"]') for line in final)


def test_containerfile_copies_every_package_of_the_project() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {line.split()[1] for line in _stages()[0] if line.startswith("COPY ")}
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    ignore = (DEPLOY / "Containerfile.dockerignore").read_text()
    for package in packages:
        assert f"!{package}/" in ignore, f"{package} is excluded from the build context"


# -- the Helm values ------------------------------------------------------------------------------


@cache
def charts() -> dict[str, Doc]:
    loaded: dict[str, Doc] = load_yaml(HELM / "charts.yaml")
    return loaded


def unknown_keys(values: Any, tree: Any, path: str = "") -> list[str]:
    """Paths set in `values` that `tree` (charts.yaml's form) does not have."""
    if tree is None or not isinstance(values, dict):
        return []
    if not isinstance(tree, dict):
        return [path]
    found = []
    for key, value in values.items():
        here = f"{path}.{key}" if path else str(key)
        if key in tree:
            found += unknown_keys(value, tree[key], here)
        elif "*" in tree:
            found += unknown_keys(value, tree["*"], here)
        else:
            found.append(here)
    return found


def helm_values(chart: str) -> list[tuple[Path, Doc]]:
    return [(HELM / name, load_yaml(HELM / name)) for name in charts()[chart]["values"]]


def test_the_key_check_catches_a_misspelt_key() -> None:
    tree = charts()["temporal"]["keys"]
    assert unknown_keys({"server": {"config": {"persistence": {"numHistoryShard": 4}}}}, tree)
    assert unknown_keys({"server": {"history": {"replicaCount": 3}}}, tree) == []


@pytest.mark.parametrize("chart", ["temporal", "nats"])
def test_helm_values_set_only_keys_the_chart_reads(chart: str) -> None:
    meta = charts()[chart]
    for path, values in helm_values(chart):
        assert f"{meta['version']}" in path.read_text(), f"{path.name}: which chart version?"
        assert unknown_keys(values, meta["keys"]) == [], path.name


def test_temporal_values_persist_on_postgres_with_a_secret_by_reference() -> None:
    [(_, values), *_] = helm_values("temporal")
    persistence = values["server"]["config"]["persistence"]
    assert isinstance(persistence["numHistoryShards"], int)
    secrets = example_secrets()
    for store in (persistence["defaultStore"], persistence["visibilityStore"]):
        sql = persistence["datastores"][store]["sql"]
        assert sql["pluginName"] == "postgres12", store
        assert "password" not in sql, f"{store}: a literal password"
        assert sql["secretKey"] in secrets[sql["existingSecret"]], store
    namespaces = [n["name"] for n in values["server"]["config"]["namespaces"]["namespace"]]
    configured = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "settings.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert configured["ORDERSAGA_TEMPORAL__NAMESPACE"] in namespaces
    assert configured["ORDERSAGA_TEMPORAL__ADDRESS"].startswith("temporal-frontend.")


def test_nats_values_are_a_three_node_jetstream_cluster_spread_across_hosts() -> None:
    [(_, values), *_] = helm_values("nats")
    config = values["config"]
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] == 3
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    spread = values["podTemplate"]["topologySpreadConstraints"]
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    secrets = example_secrets()
    for variable in values["container"]["env"].values():
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]


def test_compose_and_charts_run_the_same_server_versions() -> None:
    services = compose_services()
    temporal = helm_values("temporal")[0][1]
    nats = helm_values("nats")[0][1]
    assert (
        services["temporal"]["image"] == f"temporalio/server:{temporal['server']['image']['tag']}"
    )
    assert (
        services["temporal-schema"]["image"]
        == f"temporalio/admin-tools:{temporal['admintools']['image']['tag']}"
    )
    assert services["temporal-ui"]["image"] == f"temporalio/ui:{temporal['web']['image']['tag']}"
    assert services["nats-1"]["image"] == f"nats:{nats['container']['image']['tag']}"
    assert temporal["server"]["image"]["tag"] == charts()["temporal"]["appVersion"]
    assert nats["container"]["image"]["tag"].startswith(charts()["nats"]["appVersion"])


# -- the readiness probe --------------------------------------------------------------------------


def probe(role: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSAGA_")}
    return subprocess.run(
        [sys.executable, str(PROBE), role],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probe_knows_every_process() -> None:
    usage = probe("nonsense", {}).stderr
    assert set(re.findall(r"\{(.*)\}", usage)[0].split(",")) == set(PROCESSES)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on loopback that accepts connections."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port: int = server.getsockname()[1]
    return port


@pytest.fixture
def fake_relay(tmp_path: Path) -> Iterator[None]:
    """A process whose command line reads `... ordersaga relay`."""
    script = tmp_path / "ordersaga"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o755)
    process = subprocess.Popen([str(script), "relay"])
    try:
        yield
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(sys.platform != "linux", reason="the probe reads /proc")
def test_probe_of_a_worker_role(fake_relay: None, listening: int, closed_port: int) -> None:
    up = {
        "ORDERSAGA_DATABASE__URL": f"postgresql+asyncpg://u:p@127.0.0.1:{listening}/db",
        "ORDERSAGA_NATS__URL": f"nats://127.0.0.1:{closed_port},nats://u:p@127.0.0.1:{listening}",
    }
    ready = probe("relay", up)
    assert ready.returncode == 0, ready.stderr

    nats_down = {**up, "ORDERSAGA_NATS__URL": f"nats://127.0.0.1:{closed_port}"}
    assert "NATS unreachable" in probe("relay", nats_down).stderr

    assert "no `ordersaga projector` process" in probe("projector", up).stderr
    assert "ORDERSAGA_DATABASE__URL is not set" in probe("relay", {}).stderr

    # As deploy/ sets them: a user and no password, the three NATS servers as a seed list.
    configured = {
        "ORDERSAGA_DATABASE__URL": f"postgresql+asyncpg://ordersaga@127.0.0.1:{listening}/db",
        "ORDERSAGA_NATS__URL": ", ".join(
            f"nats://127.0.0.1:{port}" for port in (closed_port, closed_port, listening)
        ),
    }
    ready = probe("relay", configured)
    assert ready.returncode == 0, ready.stderr
    all_down = {**configured, "ORDERSAGA_NATS__URL": f"nats://127.0.0.1:{closed_port},"}
    assert "NATS unreachable" in probe("relay", all_down).stderr
    db_down = {
        **configured,
        "ORDERSAGA_DATABASE__URL": f"postgresql+asyncpg://ordersaga@127.0.0.1:{closed_port}/db",
    }
    assert "Postgres unreachable" in probe("relay", db_down).stderr


@pytest.mark.parametrize(("status", "ready"), [(200, True), (503, False)])
def test_probe_of_the_api_asks_readyz(status: int, ready: bool) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            result = probe("api", {"ORDERSAGA_API__PORT": str(server.server_address[1])})
        finally:
            server.shutdown()
    assert (result.returncode == 0) is ready, result.stderr
