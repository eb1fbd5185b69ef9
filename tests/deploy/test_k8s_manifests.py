"""The Kubernetes manifests (deploy/k8s): every kustomize target renders, every rendered object
validates offline against the Kubernetes OpenAPI schemas, and the properties the core and the
facade rely on hold (gRPC probes, headless Service, drain within the grace period, NetworkPolicy,
non-root pods).

Rendering uses a real kustomize: `kustomize build` when that binary is on PATH, else
`kubectl kustomize`. Without either, the rendered-output tests skip (saying so) and
`test_source_resources_validate` still validates every complete object file of the tree.
Schemas come from the `kubernetes-validate` package (bundled, offline, strict: unknown fields
fail). Custom resources (KEDA ScaledObject, ServiceMonitor, InferencePool, HTTPRoute,
LeaderWorkerSet) have no schema there: they are checked structurally here (apiVersion, kind,
required fields, and that they point at objects the same render contains); a LeaderWorkerSet's
two pod templates validate against the Pod schema.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
TARGETS = ["base"] + sorted(
    f"overlays/{path.name}" for path in (K8S_DIR / "overlays").iterdir() if path.is_dir()
)
# The oldest Kubernetes the manifests support (native gRPC probes are GA since 1.27) and the
# newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
NAMESPACE = "tandem"
CORE_GRPC_PORT = 50051
CORE_METRICS_PORT = 9090
# Tandem's own images, and the pinned Redis of the responses-redis component.
IMAGE_PATTERN = r"ghcr\.io/tandem/tandem-(core|facade):[\w.-]+|docker\.io/library/redis:[\d.]+-\w+"
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
}
LWS_RESTART_POLICIES = ("RecreateGroupOnPodRestart", "None")
LWS_STARTUP_POLICIES = ("LeaderCreated", "LeaderReady")


def _renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


RENDERER = _renderer()
needs_renderer = pytest.mark.skipif(
    RENDERER is None,
    reason="neither `kustomize` nor `kubectl` is on PATH: rendered manifests not checked "
    "(test_source_resources_validate still validates the source files)",
)


@cache
def render(target: str) -> tuple[dict, ...]:
    assert RENDERER is not None
    result = subprocess.run([*RENDERER, str(K8S_DIR / target)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(RENDERER)} {target} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(objects, kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(deployment: dict, name: str) -> dict:
    return template_container(deployment["spec"]["template"], name)


def template_container(template: dict, name: str) -> dict:
    return next(c for c in template["spec"]["containers"] if c["name"] == name)


def core_template(objects) -> dict:
    """The pod template of the core that serves gRPC: the Deployment's, or under a
    LeaderWorkerSet (multi-host) its leader's."""
    sets = [o for o in objects if o["kind"] == "LeaderWorkerSet"]
    if sets:
        return find(objects, "LeaderWorkerSet", "tandem-core")["spec"]["leaderWorkerTemplate"][
            "leaderTemplate"]
    return find(objects, "Deployment", "tandem-core")["spec"]["template"]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in an argument list."""
    for index, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(args):
            return args[index + 1]
    return None


def validate_schema(obj: dict) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes "
                        f"{version} at {path}: {error.message}")


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def pod_templates(objects) -> list[dict]:
    templates = [o["spec"]["template"] for o in objects if o["kind"] == "Deployment"]
    for lws in (o for o in objects if o["kind"] == "LeaderWorkerSet"):
        group = lws["spec"]["leaderWorkerTemplate"]
        templates += [group["leaderTemplate"], group["workerTemplate"]]
    return templates


def check_custom_resource(obj: dict, objects) -> None:
    """Structural checks of the custom resources (no schema in kubernetes-validate)."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    assert (obj["apiVersion"], kind) in CUSTOM_KINDS
    assert obj["metadata"]["name"]
    if kind == "ScaledObject":
        target = spec["scaleTargetRef"]
        find(objects, target.get("kind", "Deployment"), target["name"])
        assert 0 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
        assert spec["triggers"], "a ScaledObject needs triggers"
        for trigger in spec["triggers"]:
            assert trigger["type"] and isinstance(trigger["metadata"], dict)
            if trigger["type"] == "prometheus":
                metadata = trigger["metadata"]
                assert metadata["serverAddress"].startswith("http")
                assert "tandem:num_requests_waiting" in metadata["query"]
                float(metadata["threshold"])
    elif kind == "ServiceMonitor":
        services = [o for o in objects if o["kind"] == "Service"
                    and labels_match(spec["selector"]["matchLabels"], o["metadata"]["labels"])]
        assert services, "the ServiceMonitor selects no Service"
        port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
    elif kind == "InferencePool":
        templates = [t for t in pod_templates(objects)
                     if labels_match(spec["selector"]["matchLabels"], t["metadata"]["labels"])]
        assert templates, "the InferencePool selects no pods"
        ports = {p["containerPort"] for t in templates for c in t["spec"]["containers"]
                 for p in c.get("ports", [])}
        assert spec["targetPorts"]
        assert all(port["number"] in ports for port in spec["targetPorts"])
        assert spec["endpointPickerRef"]["name"]
    elif kind == "LeaderWorkerSet":
        assert set(spec) <= {"replicas", "leaderWorkerTemplate", "startupPolicy",
                             "rolloutStrategy", "networkConfig"}, sorted(spec)
        assert spec.get("startupPolicy", "LeaderCreated") in LWS_STARTUP_POLICIES
        group = spec["leaderWorkerTemplate"]
        assert set(group) <= {"size", "restartPolicy", "leaderTemplate", "workerTemplate",
                              "subGroupPolicy"}, sorted(group)
        assert group["size"] >= 2 and group["restartPolicy"] in LWS_RESTART_POLICIES
        for template in (group["leaderTemplate"], group["workerTemplate"]):
            validate_schema({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": obj["metadata"]["name"],
                                          "labels": template["metadata"]["labels"]},
                             "spec": template["spec"]})
    elif kind == "HTTPRoute":
        assert spec["parentRefs"] and all(ref["name"] for ref in spec["parentRefs"])
        for rule in spec["rules"]:
            for ref in rule["backendRefs"]:
                find(objects, ref.get("kind", "Service"), ref["name"])


# --- every object validates ---------------------------------------------------------------


def test_validator_rejects_unknown_fields():
    """kubernetes-validate in strict mode catches a misspelt field (so passing means something)."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["startupprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_source_resources_validate():
    """Without a renderer too: every complete object named under `resources:` validates."""
    checked = 0
    for kustomization in K8S_DIR.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        assert spec["kind"] in ("Kustomization", "Component")
        for entry in spec.get("resources", []):
            path = kustomization.parent / entry
            if path.is_dir():
                continue
            for obj in yaml.safe_load_all(path.read_text()):
                if not obj:
                    continue
                obj.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS:
                    validate_schema(obj)
                checked += 1
        for patch in spec.get("patches", []):
            assert (kustomization.parent / patch["path"]).is_file()
    assert checked >= 15


@needs_renderer
@pytest.mark.parametrize("target", TARGETS)
def test_rendered_objects_validate(target):
    objects = render(target)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            check_custom_resource(obj, objects)
        else:
            validate_schema(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


@needs_renderer
@pytest.mark.parametrize("target", TARGETS)
def test_images_resolved_and_pods_non_root(target):
    for template in pod_templates(render(target)):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for item in pod["containers"] + pod.get("initContainers", []):
            assert re.fullmatch(IMAGE_PATTERN, item["image"]), (
                f"{item['name']}: image {item['image']!r} not set by kustomize images:")
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0


# --- the core ------------------------------------------------------------------------------


@needs_renderer
@pytest.mark.parametrize("target", TARGETS)
def test_core_probes_grace_period_and_model_volume(target):
    objects = render(target)
    template = core_template(objects)
    pod = template["spec"]
    main = template_container(template, "core")
    assert main["command"] == ["tandem"] and main["args"][0] == "core"
    args = main["args"]
    assert flag(args, "--grpc-host") == "0.0.0.0"
    assert flag(args, "--grpc-port") == str(CORE_GRPC_PORT)
    assert flag(args, "--metrics-port") == str(CORE_METRICS_PORT)
    # Probes: readiness and startup on tandem.v1.Inference, liveness on "".
    for probe_name in ("startupProbe", "readinessProbe"):
        probe = main[probe_name]["grpc"]
        assert probe == {"port": CORE_GRPC_PORT, "service": "tandem.v1.Inference"}, probe_name
    liveness = main["livenessProbe"]["grpc"]
    assert liveness["port"] == CORE_GRPC_PORT and liveness.get("service", "") == ""
    # The pod outlives the drain: grace period > --drain-timeout-s (+ any preStop sleep).
    drain_timeout_s = float(flag(args, "--drain-timeout-s") or 30.0)
    pre_stop_s = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > drain_timeout_s + pre_stop_s
    # The model comes read-only from the PVC.
    model = flag(args, "--model")
    assert model and model.startswith("/models/")
    mount = next(m for m in main["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]
    find(objects, "PersistentVolumeClaim", claim["claimName"])
    assert claim["readOnly"] is True
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]


@needs_renderer
def test_core_service_is_headless_and_selects_core_pods():
    objects = render("base")
    service = find(objects, "Service", "tandem-core")
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": CORE_GRPC_PORT, "metrics": CORE_METRICS_PORT}
    core = find(objects, "Deployment", "tandem-core")
    assert labels_match(service["spec"]["selector"], core["spec"]["template"]["metadata"]["labels"])


@needs_renderer
@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_admits_only_facade_to_grpc(target):
    objects = render(target)
    core_labels = core_template(objects)["metadata"]["labels"]
    facade_labels = find(objects, "Deployment", "tandem-facade")["spec"]["template"][
        "metadata"]["labels"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"
                and labels_match(o["spec"]["podSelector"]["matchLabels"], core_labels)]
    assert any(p["metadata"]["name"] == "tandem-core" for p in policies)
    grpc_sources = []
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            assert ports, f"{policy['metadata']['name']}: a rule without ports opens every port"
            if any(p["port"] in (CORE_GRPC_PORT, "grpc") for p in ports):
                grpc_sources += rule["from"]
    assert grpc_sources, "nothing may reach the core's gRPC port"
    for source in grpc_sources:
        assert set(source) == {"podSelector"}, f"gRPC port open to {source}"
        assert labels_match(source["podSelector"]["matchLabels"], facade_labels)
        assert not labels_match(source["podSelector"]["matchLabels"], core_labels)


@needs_renderer
@pytest.mark.parametrize("target", TARGETS)
def test_pod_disruption_budgets_cover_both_workloads(target):
    objects = render(target)
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for template in (core_template(objects),
                     find(objects, "Deployment", "tandem-facade")["spec"]["template"]):
        labels = template["metadata"]["labels"]
        assert any(labels_match(b["spec"]["selector"]["matchLabels"], labels) for b in budgets)


# --- the facade ----------------------------------------------------------------------------


@needs_renderer
def test_facade_reaches_core_through_headless_dns_and_has_http_probes():
    objects = render("base")
    facade = find(objects, "Deployment", "tandem-facade")
    main = container(facade, "facade")
    assert main["args"][0] == "facade" and flag(main["args"], "--host") == "0.0.0.0"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    config_names = [s["configMapRef"]["name"] for s in main["envFrom"] if "configMapRef" in s]
    settings = find(objects, "ConfigMap", config_names[0])["data"]
    address = settings["TANDEM_CORE_ADDRESS"]
    match = re.fullmatch(r"dns:///tandem-core(?:\.([a-z0-9-]+)\.svc\.cluster\.local)?:(\d+)",
                         address)
    assert match, address
    assert match.group(1) in (None, NAMESPACE), "core address names another namespace"
    assert int(match.group(2)) == CORE_GRPC_PORT
    assert all(key.startswith("TANDEM_") for key in settings)
    service = find(objects, "Service", "tandem-facade")
    facade_labels = facade["spec"]["template"]["metadata"]["labels"]
    assert labels_match(service["spec"]["selector"], facade_labels)
    hpa = find(objects, "HorizontalPodAutoscaler", "tandem-facade")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "tandem-facade"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# --- the accelerator overlays --------------------------------------------------------------


@needs_renderer
@pytest.mark.parametrize(("target", "resource"), [("overlays/gpu", "nvidia.com/gpu"),
                                                  ("overlays/tpu", "google.com/tpu")])
def test_accelerator_overlays_request_devices(target, resource):
    core = find(render(target), "Deployment", "tandem-core")
    main = container(core, "core")
    count = int(main["resources"]["limits"][resource])
    assert count >= 1 and int(main["resources"]["requests"][resource]) == count
    assert int(flag(main["args"], "--tensor-parallel") or 1) <= count
    pod = core["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and any(t["key"] == resource for t in pod["tolerations"])
    if resource == "google.com/tpu":
        assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"]
        assert int(flag(main["args"], "--tensor-parallel")) == count


@needs_renderer
def test_optional_overlays_add_their_resources():
    assert find(render("overlays/keda"), "ScaledObject", "tandem-core")
    assert find(render("overlays/servicemonitor"), "ServiceMonitor", "tandem-core")
    gateway = render("overlays/gateway-inference")
    pool = find(gateway, "InferencePool", "tandem-core")
    sidecar = container(find(gateway, "Deployment", "tandem-core"), "facade")
    environment = {e["name"]: e["value"] for e in sidecar["env"]}
    assert environment["TANDEM_CORE_ADDRESS"] == f"127.0.0.1:{CORE_GRPC_PORT}"
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]


@needs_renderer
def test_responses_redis_component_points_every_facade_at_one_redis():
    """The facade's TANDEM_RESPONSES_STORE_URL names a Service of the same render that selects
    the Redis pods on the port Redis listens on, and only facade pods may reach it."""
    objects = render("overlays/responses-redis")
    url = find(objects, "ConfigMap", "tandem-facade")["data"]["TANDEM_RESPONSES_STORE_URL"]
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url)
    assert match, url
    service = find(objects, "Service", match.group(1))
    port = next(p for p in service["spec"]["ports"] if p["port"] == int(match.group(2)))
    redis = find(objects, "Deployment", "tandem-responses-redis")
    template = redis["spec"]["template"]
    assert labels_match(service["spec"]["selector"], template["metadata"]["labels"])
    main = container(redis, "redis")
    assert port["targetPort"] in {p["name"] for p in main["ports"]}
    assert flag(main["args"], "--maxmemory-policy") == "allkeys-lru"
    policy = find(objects, "NetworkPolicy", "tandem-responses-redis")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert labels_match(selector, template["metadata"]["labels"])
    sources = [source["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"]
               for source in rule["from"]]
    assert sources == [{"app.kubernetes.io/name": "tandem-facade"}]
    assert "TANDEM_RESPONSES_STORE_URL" not in find(render("overlays/cpu"), "ConfigMap",
                                                     "tandem-facade")["data"]


@needs_renderer
def test_multihost_overlay_runs_one_core_over_a_leader_worker_group():
    """overlays/tpu-multihost: one LeaderWorkerSet group per slice. Leader and workers start
    `tandem core --distributed` from the env LWS sets, with flags the real CLI accepts; the model
    splits over every chip of the group; only the leader serves gRPC (the Service and the
    probes are its); the group's pods reach the coordinator and the step channel (port + 1)."""
    from core.cli import build_parser

    objects = render("overlays/tpu-multihost")
    assert not [o for o in objects if o["kind"] == "Deployment"
                and o["metadata"]["name"] == "tandem-core"]
    group = find(objects, "LeaderWorkerSet", "tandem-core")["spec"]["leaderWorkerTemplate"]
    leader = template_container(group["leaderTemplate"], "core")
    worker = template_container(group["workerTemplate"], "core")
    lws_env = {"$(LWS_LEADER_ADDRESS)": "tandem-core-0.tandem-core.tandem",
               "$(LWS_GROUP_SIZE)": str(group["size"])}
    coordinator_ports = set()
    for main, index in ((leader, 0), (worker, 1)):
        args = main["args"]
        assert flag(args, "--distributed").startswith("$(LWS_LEADER_ADDRESS):")
        assert flag(args, "--num-processes") == "$(LWS_GROUP_SIZE)"
        assert flag(args, "--process-id") == "$(LWS_WORKER_INDEX)"
        chips = int(main["resources"]["limits"]["google.com/tpu"])
        assert int(flag(args, "--tensor-parallel")) == group["size"] * chips
        concrete = [arg.replace("$(LWS_WORKER_INDEX)", str(index)) for arg in args]
        for variable, value in lws_env.items():
            concrete = [arg.replace(variable, value) for arg in concrete]
        parsed = build_parser().parse_args(concrete)  # exits on a flag the CLI does not know
        assert parsed.num_processes == group["size"] and parsed.process_id == index
        coordinator_ports.add(int(flag(args, "--distributed").rsplit(":", 1)[1]))
    assert len(coordinator_ports) == 1
    (port,) = coordinator_ports
    assert {p["containerPort"] for p in leader["ports"]} >= {CORE_GRPC_PORT, port, port + 1}
    assert "ports" not in worker and "readinessProbe" not in worker
    service = find(objects, "Service", "tandem-core")
    assert labels_match(service["spec"]["selector"], group["leaderTemplate"]["metadata"]["labels"])
    assert not labels_match(service["spec"]["selector"],
                            group["workerTemplate"]["metadata"]["labels"])
    policy = find(objects, "NetworkPolicy", "tandem-core-group")
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        labels = template["metadata"]["labels"]
        assert labels_match(policy["spec"]["podSelector"]["matchLabels"], labels)
        assert labels_match(policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
                            labels)
    (rule,) = policy["spec"]["ingress"][0]["ports"]
    assert rule["port"] == port and rule["endPort"] == port + 1
