"""deploy/kserve/, validated offline: no cluster, no API server, no KServe or KEDA controller.

- Core kinds (Deployment, Service, HorizontalPodAutoscaler) against the OpenAPI schemas of
  pinned Kubernetes versions (kubernetes-validate, strict: unknown fields are errors).
- KServe's ServingRuntime and InferenceService and KEDA's ScaledObject: kubernetes-validate has
  no schema for them, and their CRDs stay out of this repository. Their own fields are checked
  against small JSON schemas below, written from the Go types (kserve pkg/apis/serving,
  kedacore apis/keda/v1alpha1) for the fields these manifests use, closed to any other; the core
  types they embed (containers, pod fields, HPA behavior) are wrapped in a Pod or an HPA and
  validated strictly as the core kinds are.
- Agreement with the code: environment variables are server options and parse into a valid
  ServerConfig; ports, probes and scrape annotations match the options set; probe paths are the
  REST server's health routes; the autoscalers' metric is a gauge the server exports; secrets
  come from Secrets.
- On real processes: the ServingRuntime's and the Deployment's environment start a server (on
  free ports and a test model) whose probe endpoints answer, whose scrape has the autoscalers'
  metric and which signs with the Secret's key; the client service config of the headless
  Service makes round_robin skip a NOT_SERVING server (two local gRPC servers).

What this cannot check: that KServe's controller and webhooks accept the objects (defaulting,
runtime selection, storage initializer, Knative's one-port rule), that prometheus-adapter or
KEDA produce the metric, that the image (built with the oip extra the runtime needs) runs under these
security settings, or anything else only a cluster shows.
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.request
from concurrent import futures
from dataclasses import fields
from pathlib import Path

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from smoothserve import healthcheck
from smoothserve.config import ServerConfig
from smoothserve.metrics import Metrics
from smoothserve.records import private_key_pem, public_key_pem
from smoothserve.transport import oip_rest
from smoothserve_client import SmoothServeClient
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
KSERVE = ROOT / "deploy" / "kserve"
# The oldest version these manifests are meant for (native gRPC probes are GA since 1.27,
# autoscaling/v2 since 1.23) and the newest kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.29", "1.37")
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler"}
CRD_KINDS = {"ServingRuntime", "InferenceService", "ScaledObject"}
RUNTIME_CONTAINER = "kserve-container"  # the container KServe merges the predictor's model into
SECRET_PLACEHOLDER = "<from a Secret>"


def load_manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(KSERVE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


MANIFESTS = load_manifests()


def of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict:
    docs = [d for d in of_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(docs) == 1, f"expected one {kind} {name or ''}, found {len(docs)}"
    return docs[0]


def label(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def validate_core(doc: dict, version: str, what: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        pytest.fail(f"{what} (Kubernetes {version}): {where}: {error.message}")


def pod(spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrapped"}, "spec": spec}


# ---- The CRD kinds' own fields (closed schemas) --------------------------------------------

STR = {"type": "string"}
BOOL = {"type": "boolean"}
STR_MAP = {"type": "object", "additionalProperties": STR}
EMBEDDED = {}  # a core type: validated strictly by kubernetes-validate, wrapped in a Pod or HPA


def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}  # fmt: skip


def metadata_schema() -> dict:
    return closed({"name": STR, "namespace": STR, "labels": STR_MAP, "annotations": STR_MAP},
                  ("name",))  # fmt: skip


PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
# ServingRuntimePodSpec: the pod fields a ServingRuntime may set (kserve servingruntime_types.go).
RUNTIME_POD_FIELDS = ("containers", "volumes", "nodeSelector", "affinity", "tolerations",
                      "imagePullSecrets", "hostIPC", "schedulerName", "resourceClaims")  # fmt: skip
SERVING_RUNTIME = closed({
    "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
    "kind": {"const": "ServingRuntime"},
    "metadata": metadata_schema(),
    "spec": closed({
        "annotations": STR_MAP,
        "labels": STR_MAP,
        "supportedModelFormats": {"type": "array", "minItems": 1, "items": closed({
            "name": STR, "version": STR, "autoSelect": BOOL,
            "priority": {"type": "integer", "minimum": 1},
        }, ("name",))},
        "protocolVersions": {"type": "array", "items": PROTOCOLS},
        "multiModel": BOOL,
        "disabled": BOOL,
        **{name: EMBEDDED for name in RUNTIME_POD_FIELDS},
    }, ("containers",)),
}, ("apiVersion", "kind", "metadata", "spec"))  # fmt: skip

# ModelSpec's own fields; the rest of it is an inline core Container (predictor_model.go).
MODEL_FIELDS = {
    "modelFormat": closed({"name": STR, "version": STR}, ("name",)),
    "runtime": STR,
    "runtimeVersion": STR,
    "protocolVersion": PROTOCOLS,
    "storageUri": {"type": "string", "pattern": "^(s3|gs|https?|pvc|hdfs|webhdfs|oci)://"},
}
# ComponentExtensionSpec's fields used here; the rest of a predictor is an inline core PodSpec.
PREDICTOR_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "model": {"type": "object", "properties": MODEL_FIELDS, "required": ["modelFormat"]},
}
INFERENCE_SERVICE = closed({
    "apiVersion": {"const": "serving.kserve.io/v1beta1"},
    "kind": {"const": "InferenceService"},
    "metadata": metadata_schema(),
    "spec": closed({
        "predictor": {"type": "object", "properties": PREDICTOR_FIELDS, "required": ["model"]},
    }, ("predictor",)),
}, ("apiVersion", "kind", "metadata", "spec"))  # fmt: skip

SCALED_OBJECT = closed({
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"const": "ScaledObject"},
    "metadata": metadata_schema(),
    "spec": closed({
        "scaleTargetRef": closed({"apiVersion": STR, "kind": STR, "name": STR}, ("name",)),
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "fallback": closed({"failureThreshold": {"type": "integer", "minimum": 1},
                            "replicas": {"type": "integer", "minimum": 1}},
                           ("failureThreshold", "replicas")),
        "advanced": closed({"horizontalPodAutoscalerConfig": closed({"behavior": EMBEDDED})}),
        "triggers": {"type": "array", "minItems": 1, "items": closed({
            "type": {"const": "prometheus"},
            "name": STR,
            # The prometheus scaler's metadata (keda pkg/scalers/prometheus_scaler.go); every
            # value is a string (map[string]string).
            "metadata": closed({
                "serverAddress": {"type": "string", "pattern": "^https?://"},
                "query": STR,
                "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "activationThreshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "namespace": STR,
                "ignoreNullValues": {"enum": ["true", "false"]},
            }, ("serverAddress", "query", "threshold")),
        }, ("type", "metadata"))},
    }, ("scaleTargetRef", "triggers")),
}, ("apiVersion", "kind", "metadata", "spec"))  # fmt: skip

CRD_SCHEMAS = {"ServingRuntime": SERVING_RUNTIME, "InferenceService": INFERENCE_SERVICE,
               "ScaledObject": SCALED_OBJECT}  # fmt: skip


def crd_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[doc["kind"]])
    return [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def model_container(isvc: dict) -> dict:
    """The InferenceService's model as the core Container it inlines, less KServe's fields."""
    model = isvc["spec"]["predictor"]["model"]
    return {"name": RUNTIME_CONTAINER, **{k: v for k, v in model.items() if k not in MODEL_FIELDS}}


def embedded_core(doc: dict) -> list[tuple[str, dict]]:
    """The core objects a CRD embeds, wrapped so that kubernetes-validate can check them."""
    spec = doc["spec"]
    if doc["kind"] == "ServingRuntime":
        return [("pod fields", pod({k: spec[k] for k in RUNTIME_POD_FIELDS if k in spec}))]
    if doc["kind"] == "InferenceService":
        predictor = spec["predictor"]
        pod_fields = {k: v for k, v in predictor.items() if k not in PREDICTOR_FIELDS}
        return [("predictor pod fields and model container",
                 pod({**pod_fields, "containers": [model_container(doc)]}))]  # fmt: skip
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is None:
        return []
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "wrapped"},
           "spec": {"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": 1,
                    "behavior": behavior}}  # fmt: skip
    return [("HPA behavior", hpa)]


# ---- Schemas -------------------------------------------------------------------------------


def test_every_manifest_is_of_a_kind_this_file_validates() -> None:
    assert MANIFESTS, "no manifests under deploy/kserve"
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert kinds <= CORE_KINDS | CRD_KINDS, f"unvalidated kinds: {kinds - CORE_KINDS - CRD_KINDS}"
    assert kinds == CORE_KINDS | CRD_KINDS, f"missing: {CORE_KINDS | CRD_KINDS - kinds}"
    names = [label(doc) for _, doc in MANIFESTS]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in MANIFESTS if d["kind"] in CORE_KINDS], ids=label)
def test_core_manifest_is_valid(doc: dict, version: str) -> None:
    validate_core(doc, version, label(doc))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in MANIFESTS if d["kind"] in CRD_KINDS], ids=label)
def test_custom_resource_is_valid(doc: dict, version: str) -> None:
    assert crd_errors(doc) == []
    for what, wrapped in embedded_core(doc):
        validate_core(wrapped, version, f"{label(doc)}: {what}")


def test_the_validation_rejects_unknown_fields() -> None:
    """The checks above are strict: a misspelt field anywhere fails them."""
    version = KUBERNETES_VERSIONS[0]
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, version, strict=True)

    runtime = copy.deepcopy(one("ServingRuntime"))
    runtime["spec"]["protocolVersion"] = ["v2"]
    assert any("protocolVersion" in e for e in crd_errors(runtime))
    runtime = copy.deepcopy(one("ServingRuntime"))
    runtime["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(embedded_core(runtime)[0][1], version, strict=True)

    isvc = copy.deepcopy(one("InferenceService", "smoothserve-fmnist"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    with pytest.raises(kubernetes_validate.ValidationError, match="storageURI"):
        kubernetes_validate.validate(embedded_core(isvc)[0][1], version, strict=True)

    scaled = copy.deepcopy(one("ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 500000  # KEDA wants strings
    assert any("threshold" in e for e in crd_errors(scaled))


# ---- Agreement with the code ---------------------------------------------------------------

OPTION_ENV_NAMES = {ServerConfig.env_name(f.name) for f in fields(ServerConfig)}
SECRET_ENV_NAMES = {ServerConfig.env_name(f.name) for f in fields(ServerConfig) if not f.repr}


def smoothserve_containers() -> list[tuple[str, dict]]:
    found = [(label(one("ServingRuntime")), one("ServingRuntime")["spec"]["containers"][0])]
    deployment = one("Deployment")
    found += [(label(deployment), c) for c in deployment["spec"]["template"]["spec"]["containers"]]
    found += [(label(isvc), model_container(isvc)) for isvc in smoothserve_isvcs()]
    return found


def smoothserve_isvcs() -> list[dict]:
    runtime = one("ServingRuntime")["metadata"]["name"]
    return [
        d
        for d in of_kind("InferenceService")
        if d["spec"]["predictor"]["model"].get("runtime") == runtime
    ]


def env_of(container: dict) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            assert "secretKeyRef" in var["valueFrom"], var
            env[var["name"]] = SECRET_PLACEHOLDER
        else:
            env[var["name"]] = var["value"]
    return env


def config_of(env: dict[str, str]) -> ServerConfig:
    """The configuration the server would start with (it exits on any problem)."""
    try:
        return ServerConfig.from_args([], environ=env)
    except SystemExit as exit_:
        pytest.fail(f"the server would refuse this environment ({exit_}): {env}")


def runtime_env() -> dict[str, str]:
    return env_of(one("ServingRuntime")["spec"]["containers"][0])


def isvc_env(isvc: dict) -> dict[str, str]:
    """KServe patches the runtime's container with the model's: env merges by name."""
    return {**runtime_env(), **env_of(model_container(isvc))}


def port_named(ports: list[dict], name: str) -> int:
    matches = [p["containerPort"] for p in ports if p["name"] == name]
    assert len(matches) == 1, f"one port named {name} expected in {ports}"
    return matches[0]


@pytest.mark.parametrize("where,container", smoothserve_containers(),
                         ids=[where for where, _ in smoothserve_containers()])  # fmt: skip
def test_environment_is_server_options(where: str, container: dict) -> None:
    names = [var["name"] for var in container.get("env", [])]
    assert len(names) == len(set(names)), f"{where}: duplicate variables"
    unknown = set(names) - OPTION_ENV_NAMES
    assert not unknown, f"{where}: not SmoothServe options: {sorted(unknown)}"
    for var in container.get("env", []):
        if var["name"] in SECRET_ENV_NAMES:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            assert ref, f"{where}: {var['name']} must come from a Secret, not a literal value"


def test_signing_key_comes_from_a_required_secret() -> None:
    """A pod without the key must not start: it would sign with a key of its own process."""
    name = ServerConfig.env_name("signing_key_pem")
    for container in (one("ServingRuntime")["spec"]["containers"][0],
                      one("Deployment")["spec"]["template"]["spec"]["containers"][0]):  # fmt: skip
        (var,) = [v for v in container["env"] if v["name"] == name]
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "smoothserve-signing-key", "key": "signing-key.pem",
                       "optional": False}  # fmt: skip


def rest_route(handler_name: str) -> str:
    rest = oip_rest.RestServer(plane=None, ready=lambda: True)  # routes only; never started
    paths = [r.resource.canonical for r in rest.app.router.routes()
             if getattr(r.handler, "__name__", "") == handler_name and r.method == "GET"]  # fmt: skip
    assert len(paths) == 1, (handler_name, paths)
    return paths[0]


def test_serving_runtime_matches_the_server() -> None:
    runtime = one("ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == RUNTIME_CONTAINER
    config = config_of(runtime_env())
    assert str(config.model_repo) == "/mnt/models"  # where KServe puts the storageUri
    assert (config.http_port, config.port) == (8080, 8081)  # KServe's REST and gRPC ports
    assert config.oip_grpc and config.metrics_port > 0

    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == rest_route("server_ready") == "/v2/health/ready"
    assert live["path"] == rest_route("live") == "/v2/health/live"
    assert ready["port"] == live["port"] == config.http_port
    for path in (ready["path"], live["path"]):  # probes carry no token
        assert path.startswith(oip_rest.OPEN_PATHS)

    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(config.metrics_port)
    assert annotations["prometheus.io/port"] == str(config.metrics_port)
    assert (
        annotations["prometheus.kserve.io/path"] == annotations["prometheus.io/path"] == "/metrics"
    )
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}


@pytest.mark.parametrize("isvc", smoothserve_isvcs(), ids=label)
def test_inference_service_matches_the_runtime(isvc: dict) -> None:
    runtime = one("ServingRuntime")
    model = isvc["spec"]["predictor"]["model"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    config = config_of(isvc_env(isvc))
    ports = model["ports"]
    # KServe's predictor Service maps port 80 to the first container port: REST.
    assert ports[0]["containerPort"] == config.http_port
    assert port_named(ports, "http1") == config.http_port
    assert port_named(ports, "grpc") == config.port
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def test_triton_variant_points_at_the_triton_predictor() -> None:
    (smooth,) = [
        i for i in smoothserve_isvcs() if "SMOOTHSERVE_TRITON_URLS" in env_of(model_container(i))
    ]
    config = config_of(isvc_env(smooth))
    assert config.backend == "triton"
    (url,) = config.triton_urls
    host, port = url.rsplit(":", 1)
    triton = one("InferenceService", host.removesuffix("-predictor"))
    assert host == f"{triton['metadata']['name']}-predictor"  # KServe's predictor Service
    model = triton["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-tritonserver"
    # kserve-tritonserver starts tritonserver with --grpc-port=9000; the port must be exposed.
    assert int(port) == port_named(model["ports"], "grpc") == 9000
    assert model["storageUri"] == smooth["spec"]["predictor"]["model"]["storageUri"]


def test_deployment_and_headless_service_match_the_server() -> None:
    deployment = one("Deployment")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    config = config_of(env_of(container))
    assert config.backend == "onnxruntime" and config.http_port == -1  # the Dockerfile's image
    ports = container["ports"]
    assert port_named(ports, "grpc") == config.port
    assert port_named(ports, "metrics") == config.metrics_port
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == config.port  # grpc.health.v1, no token
        assert container[probe]["grpc"].get("service", "") == ""  # the whole server
    assert container["livenessProbe"]["tcpSocket"]["port"] == config.port
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics_port)
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"

    service = one("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert (
        by_name["grpc"]["port"] == port_named(ports, by_name["grpc"]["targetPort"]) == config.port
    )
    assert by_name["metrics"]["port"] == port_named(ports, by_name["metrics"]["targetPort"])


def test_drain_fits_in_the_termination_grace_period() -> None:
    deployment_spec = one("Deployment")["spec"]["template"]["spec"]
    (container,) = deployment_spec["containers"]
    config = config_of(env_of(container))
    assert config.grace_period_s < deployment_spec["terminationGracePeriodSeconds"]
    # A ServingRuntime cannot set the grace period: its pods get Kubernetes' default, 30 s.
    assert config_of(runtime_env()).grace_period_s < 30


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize(
    "where,container", smoothserve_containers()[:2], ids=["runtime", "deployment"]
)
def test_threads_match_the_cpu_limit(where: str, container: dict) -> None:
    """The defaults (one thread per core) would count the node's cores, not the limit."""
    config = config_of(env_of(container))
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    assert 1 <= config.noise_threads <= limit, where
    assert 1 <= config.intra_op_threads <= limit, where


def test_pods_run_as_the_image_user() -> None:
    """runAsNonRoot needs a numeric user: the image's USER is a name."""
    uid = int(re.search(r"useradd --uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    runtime = one("ServingRuntime")["spec"]["containers"][0]["securityContext"]
    pod_context = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    for context in (runtime, pod_context):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == uid


def test_image_has_what_the_serving_runtime_needs() -> None:
    """The ServingRuntime's REST port and probes need the oip extra in the image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'pip install[^\n]*"\.\[\$extras\]"', dockerfile)
    extras = re.findall(r'(?m)^ +\w+\) extras="([\w,]+)" ;;', dockerfile)  # each FASTNOISE value
    assert extras and all("oip" in chosen.split(",") for chosen in extras)


def exported_gauges() -> set[str]:
    return {fam.name for fam in Metrics().registry.collect() if fam.type == "gauge"}


def test_autoscalers_use_a_gauge_the_server_exports() -> None:
    hpa = one("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "smoothserve_samples_in_flight"
    assert metric["pods"]["metric"]["name"] in exported_gauges()

    scaled = one("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert re.findall(r"smoothserve_\w+", trigger["metadata"]["query"]) == [
        "smoothserve_samples_in_flight"
    ]
    # Every metric either file names, comments included (the prometheus-adapter rule).
    for name in ("hpa.yaml", "keda-scaledobject.yaml"):
        for metric_name in re.findall(r"smoothserve_[a-z_]+", (KSERVE / name).read_text()):
            family = metric_name.removesuffix("_total")
            known = {fam.name for fam in Metrics().registry.collect()}
            assert family in known, f"{name}: {metric_name} is not a SmoothServe metric"

    # The two autoscalers are alternatives with the same target and bounds.
    deployment = one("Deployment")
    for ref in (hpa["spec"]["scaleTargetRef"], scaled["spec"]["scaleTargetRef"]):
        assert ref == {"apiVersion": "apps/v1", "kind": "Deployment",
                       "name": deployment["metadata"]["name"]}  # fmt: skip
    assert float(metric["pods"]["target"]["averageValue"]) == float(
        trigger["metadata"]["threshold"]
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        scaled["spec"]["minReplicaCount"],
        scaled["spec"]["maxReplicaCount"],
    )
    # Below admission control's limit, or the target is never reached.
    limit = config_of(env_of(deployment["spec"]["template"]["spec"]["containers"][0]))
    assert float(trigger["metadata"]["threshold"]) < limit.max_samples_in_flight


@pytest.mark.parametrize("where", ["runtime", "deployment"])
def test_the_environment_starts_a_server_whose_probes_pass(where: str, linear_repo) -> None:
    """The manifests' environment, on a real server: the probes' endpoints answer, the metric
    the autoscalers read is in the scrape, and records are signed with the Secret's key. Ports
    and model repository are the test's (free ports, a local model): flags override the
    environment."""
    if where == "runtime":
        container = one("ServingRuntime")["spec"]["containers"][0]
    else:
        container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    key = Ed25519PrivateKey.generate()
    env = {
        **env_of(container),
        ServerConfig.env_name("signing_key_pem"): private_key_pem(key).decode(),
    }
    args = ["--http-port", "0"] if where == "runtime" else []
    with ServerProcess(linear_repo, args=args, env=env) as server:
        if where == "runtime":
            for probe in ("readinessProbe", "livenessProbe"):
                url = f"http://127.0.0.1:{server.http_port}{container[probe]['httpGet']['path']}"
                with urllib.request.urlopen(url, timeout=10) as response:
                    assert response.status == 200, url
        else:
            assert server.http_port == -1
        serving, detail = healthcheck.check(server.address)  # what a gRPC probe asks
        assert serving, detail
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            scrape = response.read().decode()
        assert re.search(r"^smoothserve_samples_in_flight ", scrape, re.MULTILINE)
        with SmoothServeClient(server.address, timeout=30) as client:
            served = client.signing_key()
        assert served.persistent
        assert served.public_key_pem == public_key_pem(key.public_key())


# ---- The client setting of the headless Service, on real gRPC ------------------------------


def health_server(status: int) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def statuses_seen(target: str, service_config: str | None, calls: int) -> set[int]:
    options = [] if service_config is None else [("grpc.service_config", service_config)]
    if service_config is None:
        options.append(("grpc.lb_policy_name", "round_robin"))
    seen = set()
    with grpc.insecure_channel(target, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        for _ in range(calls):
            request = health_pb2.HealthCheckRequest(service="")
            seen.add(stub.Check(request, timeout=5, wait_for_ready=True).status)
            if len(seen) == 2 or time.monotonic() > deadline:
                break
    return seen


def test_headless_service_client_config_skips_a_draining_pod() -> None:
    """The service config documented on the headless Service: round_robin over the resolved
    addresses, and client-side health checking, so calls avoid a pod answering NOT_SERVING
    (as a draining SmoothServe does) even while DNS still lists it."""
    service_config = one("Service")["metadata"]["annotations"]["grpc-client-service-config"]
    parsed = json.loads(service_config)
    assert parsed["loadBalancingConfig"] == [{"round_robin": {}}]
    serving, serving_port = health_server(health_pb2.HealthCheckResponse.SERVING)
    draining, draining_port = health_server(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        target = f"ipv4:127.0.0.1:{serving_port},127.0.0.1:{draining_port}"
        # Round robin alone reaches both servers: the check below can tell them apart.
        assert statuses_seen(target, None, 200) == {
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        }
        # With the documented config every call lands on the serving one.
        assert statuses_seen(target, service_config, 40) == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        serving.stop(None)
        draining.stop(None)
