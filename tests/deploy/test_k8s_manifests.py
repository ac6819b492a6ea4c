"""deploy/k8s/ without a cluster (part of ``make test``): the core kinds pass the Kubernetes API
schema (kubernetes-validate, offline, strict: unknown fields fail), KServe's kinds pass the
hand-written schemas of deploy/k8s/schemas/ and their containers pass as Kubernetes containers, the
Ray Serve config passes Ray's own schema and builds, and image, ports, probes, user and paths agree
with docker/Dockerfile and the service's routes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.http.oip_routes import router

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate, test extra)")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
KUBERNETES_VERSION = "1.30.0"
KSERVE_SCHEMAS = {"InferenceService": "inferenceservice.json", "ServingRuntime": "servingruntime.json"}
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "ray-serve.yaml"
            for doc in documents(path.name)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in all_documents() if doc["kind"] == kind]


def dockerfile_value(instruction: str) -> str:
    match = re.search(rf"^{instruction} (.+)$", DOCKERFILE, re.M)
    assert match, f"docker/Dockerfile has no {instruction}"
    return match.group(1).strip()


def test_every_manifest_is_a_known_kind() -> None:
    kinds = {doc["kind"] for _, doc in all_documents()}
    assert kinds == CORE_KINDS | set(KSERVE_SCHEMAS)


@pytest.mark.parametrize("name", ["dyt-serve.yaml", "models-pvc.yaml"])
def test_core_kinds_pass_the_kubernetes_schema(name: str) -> None:
    for doc in documents(name):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_fails_the_kubernetes_schema() -> None:
    (deployment,) = by_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def as_pod(container: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}


@pytest.mark.parametrize("kind", sorted(KSERVE_SCHEMAS))
def test_kserve_kinds_pass_their_schema_and_hold_valid_containers(kind: str) -> None:
    schema = json.loads((K8S / "schemas" / KSERVE_SCHEMAS[kind]).read_text())
    found = by_kind(kind)
    assert found
    for doc in found:
        jsonschema.validate(doc, schema)
        for container in doc["spec"].get("containers", []):
            kubernetes_validate.validate(as_pod(container), KUBERNETES_VERSION, strict=True)
    broken = {**found[0], "spec": {**found[0]["spec"], "predictorr": {}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_both_kserve_services_speak_protocol_v2_from_the_models_volume() -> None:
    services = {doc["metadata"]["name"]: doc["spec"]["predictor"]["model"] for doc in by_kind("InferenceService")}
    assert {m["protocolVersion"] for m in services.values()} == {"v2"}
    assert {m["runtime"] for m in services.values()} == {"dyt-serve", "kserve-tritonserver"}
    (claim,) = by_kind("PersistentVolumeClaim")
    assert {m["storageUri"] for m in services.values()} == {f"pvc://{claim['metadata']['name']}/"}
    (runtime,) = by_kind("ServingRuntime")
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    dyt = next(m for m in services.values() if m["runtime"] == "dyt-serve")
    assert dyt["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(container, its pod spec or runtime spec) of every manifest that runs the dyt-deploy image."""
    (deployment,) = by_kind("Deployment")
    (runtime,) = by_kind("ServingRuntime")
    pod = deployment["spec"]["template"]["spec"]
    return [(c, pod) for c in pod["containers"]] + [(c, runtime["spec"]) for c in runtime["spec"]["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_image_ports_probes_and_paths_agree_with_the_dockerfile_and_the_routes() -> None:
    build_tag = re.search(r"docker build -f docker/Dockerfile -t (\S+) \.", DOCKERFILE).group(1)
    exposed = int(dockerfile_value("EXPOSE"))
    volume = json.loads(dockerfile_value("VOLUME"))[0]
    user = int(dockerfile_value("USER").split(":")[0])
    routes = {route.path for route in router.routes}
    health = re.search(r"/v2/health/\w+", (ROOT / "docker" / "healthcheck.py").read_text()).group(0)
    for container, _ in containers():
        env = env_of(container)
        assert container["image"] == build_tag
        ports = {p["containerPort"] for p in container["ports"]}
        assert int(env["DYT_PORT"]) in ports  # the entrypoint binds $DYT_PORT
        assert container["readinessProbe"]["httpGet"]["path"] == health == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["path"] in routes
                assert port_number(container, container[probe]["httpGet"]["port"]) == int(env["DYT_PORT"])
    deployment_container, pod = containers()[0]
    assert int(env_of(deployment_container)["DYT_PORT"]) == exposed
    mounts = {m["mountPath"]: m for m in deployment_container["volumeMounts"]}
    assert env_of(deployment_container)["DYT_REPOSITORY"] == volume and mounts[volume]["readOnly"]
    assert pod["securityContext"]["runAsUser"] == user
    (service,) = by_kind("Service")
    assert service["spec"]["ports"][0]["port"] == exposed
    assert service["spec"]["selector"] == pod_labels()
    (autoscaler,) = by_kind("HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == by_kind("Deployment")[0]["metadata"]["name"]


def pod_labels() -> dict[str, str]:
    (deployment,) = by_kind("Deployment")
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_kserve_runtime_reads_the_mount_kserve_gives_it() -> None:
    """KServe puts storageUri at /mnt/models and sends traffic to port 8080."""
    (runtime,) = by_kind("ServingRuntime")
    env = env_of(runtime["spec"]["containers"][0])
    assert env["DYT_REPOSITORY"] == "/mnt/models" and env["DYT_PORT"] == "8080"
    assert runtime["spec"]["containers"][0]["name"] == "kserve-container"


def test_ray_serve_config_passes_rays_schema_and_builds(tmp_path: Path) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed (the ray extra)")
    config = yaml.safe_load((K8S / "ray-serve.yaml").read_text())
    schema.ServeDeploySchema.model_validate(config)  # types and values (Ray's schema allows extra keys)
    (app,) = config["applications"]
    assert app["import_path"] == "service.engines.ray:app_builder"
    from service.engines.ray import app_builder

    folder = tmp_path / "repo" / "vit-dyt"
    folder.mkdir(parents=True)
    (folder / "dyt.json").write_text("{}")
    built = app_builder({**app["args"], "repository": str(tmp_path / "repo")})  # an unknown arg fails here
    assert type(built).__name__ == "Application"
