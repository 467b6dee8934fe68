"""deploy/kubernetes, validated offline: every file against its schema, the overlays rendered and
validated too, and what the manifests promise each other and the service checked on the values."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize import UnsupportedKustomization, build, load_documents, strategic_merge
from tests.deploy.validation import InvalidDocument, validate_adapter_config, validate_resource

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = {"cpu": KUBERNETES / "overlays" / "cpu", "gpu": KUBERNETES / "overlays" / "gpu"}
ADAPTER_RULES = KUBERNETES / "prometheus-adapter" / "rules.yaml"
KEDA = KUBERNETES / "keda"
SCALED_OBJECT = KEDA / "scaledobject.yaml"
KSERVE = KUBERNETES / "kserve"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
METRICS_MODULE = ROOT / "service" / "metrics.py"
PORT = 3000
DRAIN_VARIABLES = ("INSPECTION_DRAIN_DELAY_S", "INSPECTION_DRAIN_TIMEOUT_S")
GPU = "nvidia.com/gpu"
# Not the bare overlay names: tests/conftest.py skips every test with a keyword `gpu` where there is no GPU.
OVERLAY_IDS = [f"{overlay}-overlay" for overlay in OVERLAYS]
KSERVE_INFERENCE_SERVICES = ("inferenceservice.yaml", "inferenceservice-custom-container.yaml")
# Every way these files run the service (`served_pods`); named here so that collection renders nothing.
SERVED = [f"overlay {overlay}" for overlay in OVERLAYS] + [f"kserve {name}" for name in KSERVE_INFERENCE_SERVICES]


def kustomize_inputs() -> tuple[set[Path], set[Path]]:
    """Kustomization files, and the patch files they name (partial resources, validated once rendered)."""
    kustomizations = set(KUBERNETES.rglob("kustomization.yaml"))
    patches = {
        kustomization.parent / entry["path"]
        for kustomization in kustomizations
        for entry in load_documents(kustomization)[0].get("patches", [])
    }
    return kustomizations, patches


def resource_files() -> list[Path]:
    """Every YAML file under deploy/kubernetes that holds whole Kubernetes objects."""
    kustomizations, patches = kustomize_inputs()
    others = kustomizations | patches | {ADAPTER_RULES}
    return sorted(path for path in KUBERNETES.rglob("*.yaml") if path not in others)


def rendered(overlay: str) -> dict[str, dict[str, Any]]:
    return {resource["kind"]: resource for resource in build(OVERLAYS[overlay])}


def one(path: Path) -> dict[str, Any]:
    (document,) = load_documents(path)
    return document


def inspection_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {variable["name"]: variable.get("value", variable.get("valueFrom")) for variable in container["env"]}


def kserve_pods() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(pod-level spec, serving container) of each way to run on KServe, by file name."""
    runtime = one(KSERVE / "servingruntime.yaml")
    through_runtime = one(KSERVE / "inferenceservice.yaml")["spec"]["predictor"]
    custom = one(KSERVE / "inferenceservice-custom-container.yaml")["spec"]["predictor"]
    pods = {
        "inferenceservice.yaml": (through_runtime, inspection_container(runtime["spec"])),
        "inferenceservice-custom-container.yaml": (custom, inspection_container(custom)),
    }
    assert tuple(pods) == KSERVE_INFERENCE_SERVICES
    return pods


def served_pods() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, serving container) of every way these files run the service."""
    pods = {}
    for overlay in OVERLAYS:
        pod = rendered(overlay)["Deployment"]["spec"]["template"]["spec"]
        pods[f"overlay {overlay}"] = (pod, inspection_container(pod))
    pods |= {f"kserve {name}": pod for name, pod in kserve_pods().items()}
    assert list(pods) == SERVED
    return pods


def registered_metrics() -> set[str]:
    """The sample names service/metrics.py exposes: a Counter `x` as x_total, a Histogram as x_bucket, ..."""
    source = METRICS_MODULE.read_text()
    exposed = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(inspection_\w+)\"", source):
        if kind == "Counter":
            exposed.add(f"{name.removesuffix('_total')}_total")
        elif kind in ("Histogram", "Summary"):
            exposed |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            exposed.add(name)
    return exposed


def promql_queries() -> dict[str, str]:
    """Every PromQL expression of the deployment files (the adapter's templates filled in as it fills them)."""
    queries = {}
    for index, rule in enumerate(yaml.safe_load(ADAPTER_RULES.read_text())["rules"]):
        queries[f"adapter rule {index} seriesQuery"] = rule["seriesQuery"]
        series = re.match(r"\w+", rule["seriesQuery"])[0]
        queries[f"adapter rule {index} metricsQuery"] = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="weld-inspection",pod=~"weld-inspection-.+"')
            .replace("<<.GroupBy>>", "pod")
        )
    for trigger in one(SCALED_OBJECT)["spec"]["triggers"]:
        queries[f"keda trigger {trigger['name']}"] = trigger["metadata"]["query"]
    for name, (predictor, _) in kserve_pods().items():
        for index, metric in enumerate(predictor["autoScaling"]["metrics"]):
            queries[f"kserve {name} metric {index}"] = metric["external"]["metric"]["query"]
    return queries


def metric_of(query: str) -> str:
    return re.search(r"\binspection_\w+", query)[0]


def label_matchers(query: str) -> dict[str, tuple[str, str]]:
    """label -> (operator, value) of the query's one selector."""
    selector = re.search(r"\{(.*?)\}", query)[1]
    return {
        label: (operator, value) for label, operator, value in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', selector)
    }


# --- every file against its schema -------------------------------------------------------------


@pytest.mark.parametrize("path", resource_files(), ids=lambda path: str(path.relative_to(KUBERNETES)))
def test_every_manifest_is_valid_against_its_schema(path: Path) -> None:
    documents = load_documents(path)
    assert documents
    for document in documents:
        validate_resource(document)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_each_overlay_renders_to_valid_resources(overlay: str) -> None:
    resources = build(OVERLAYS[overlay])
    assert sorted(resource["kind"] for resource in resources) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    for resource in resources:
        validate_resource(resource)
        assert resource["metadata"]["namespace"] == "weld-inspection"


def test_prometheus_adapter_rules_are_a_configuration_the_adapter_loads() -> None:
    validate_adapter_config(yaml.safe_load(ADAPTER_RULES.read_text()))


def test_every_file_under_deploy_kubernetes_is_read_by_a_test() -> None:
    kustomizations, patches = kustomize_inputs()
    read = set(resource_files()) | kustomizations | patches | {ADAPTER_RULES}
    assert {path for path in KUBERNETES.rglob("*") if path.is_file()} == read


def broken_deployment() -> dict[str, Any]:
    deployment = rendered("cpu")["Deployment"]
    container = inspection_container(deployment["spec"]["template"]["spec"])
    container["readinessprobe"] = container.pop("readinessProbe")
    return deployment


def broken_service() -> dict[str, Any]:
    service = rendered("cpu")["Service"]
    service["spec"]["ports"][0]["port"] = "http"
    return service


def broken_autoscaler() -> dict[str, Any]:
    autoscaler = rendered("cpu")["HorizontalPodAutoscaler"]
    del autoscaler["spec"]["maxReplicas"]
    return autoscaler


def broken_scaled_object() -> dict[str, Any]:
    scaled_object = one(SCALED_OBJECT)
    scaled_object["spec"]["triggers"][0]["metadata"]["threshold"] = 16  # KEDA wants strings
    return scaled_object


def broken_runtime() -> dict[str, Any]:
    runtime = one(KSERVE / "servingruntime.yaml")
    runtime["spec"]["containers"][0]["startupprobe"] = runtime["spec"]["containers"][0].pop("startupProbe")
    return runtime


def broken_inference_service() -> dict[str, Any]:
    service = one(KSERVE / "inferenceservice.yaml")
    service["spec"]["predictor"]["model"]["modelformat"] = service["spec"]["predictor"]["model"].pop("modelFormat")
    return service


def broken_metadata() -> dict[str, Any]:
    service = one(KSERVE / "inferenceservice.yaml")
    service["metadata"]["annotation"] = service["metadata"].pop("annotations")
    return service


@pytest.mark.parametrize(
    "broken",
    [
        broken_deployment,
        broken_service,
        broken_autoscaler,
        broken_scaled_object,
        broken_runtime,
        broken_inference_service,
        broken_metadata,
    ],
    ids=lambda broken: broken.__name__,
)
def test_validation_refuses_a_broken_manifest(broken: Callable[[], dict[str, Any]]) -> None:
    with pytest.raises(InvalidDocument):
        validate_resource(broken())


def test_validation_refuses_an_unknown_key_in_the_adapter_rules() -> None:
    config = yaml.safe_load(ADAPTER_RULES.read_text())
    config["rules"][0]["metricQuery"] = config["rules"][0].pop("metricsQuery")
    with pytest.raises(InvalidDocument):
        validate_adapter_config(config)


# --- the renderer ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: no kustomize to compare with")
@pytest.mark.parametrize("directory", [*OVERLAYS.values(), KEDA], ids=lambda path: str(path.relative_to(KUBERNETES)))
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    printed = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    by_kind = {document["kind"]: document for document in yaml.safe_load_all(printed)}
    assert by_kind == {resource["kind"]: resource for resource in build(directory)}


def test_renderer_refuses_what_it_would_render_differently_from_kustomize(tmp_path: Path) -> None:
    base = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}]}}
    with pytest.raises(UnsupportedKustomization, match="ports"):
        strategic_merge(base, {"spec": {"ports": [{"port": 2}]}})
    with pytest.raises(UnsupportedKustomization, match=r"\$patch"):
        strategic_merge(base, {"$patch": "delete"})
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "patch.yaml").write_text(yaml.safe_dump({**base, "metadata": {"name": "b"}}))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["service.yaml"], "patches": [{"path": "patch.yaml"}]})
    )
    with pytest.raises(UnsupportedKustomization, match="no resource matches"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["service.yaml"], "commonLabels": {}}))
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        build(tmp_path)


# --- what the overlays promise -----------------------------------------------------------------


def test_gpu_overlay_asks_for_one_gpu_and_the_cpu_overlay_for_none() -> None:
    gpu = inspection_container(rendered("gpu")["Deployment"]["spec"]["template"]["spec"])["resources"]
    cpu = inspection_container(rendered("cpu")["Deployment"]["spec"]["template"]["spec"])["resources"]
    assert gpu["limits"][GPU] == 1
    assert GPU not in cpu.get("limits", {}) and GPU not in cpu.get("requests", {})


def test_gpu_overlay_runs_the_cuda_image_on_cuda_on_tainted_gpu_nodes() -> None:
    gpu = rendered("gpu")["Deployment"]["spec"]["template"]["spec"]
    cpu = rendered("cpu")["Deployment"]["spec"]["template"]["spec"]
    assert inspection_container(gpu)["image"].endswith(":cuda")
    assert inspection_container(cpu)["image"].endswith(":cpu")
    assert env_of(inspection_container(gpu))["INSPECTION_PROVIDER"] == "cuda"
    assert env_of(inspection_container(cpu))["INSPECTION_PROVIDER"] == "cpu"
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert "tolerations" not in cpu


def startup_budget_s(container: dict[str, Any]) -> int:
    probe = container["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_startup_probe_waits_minutes_for_the_warm_up_and_longer_on_a_gpu() -> None:
    cpu = startup_budget_s(inspection_container(rendered("cpu")["Deployment"]["spec"]["template"]["spec"]))
    gpu = startup_budget_s(inspection_container(rendered("gpu")["Deployment"]["spec"]["template"]["spec"]))
    assert cpu >= 600
    assert gpu > cpu


@pytest.mark.parametrize("where", SERVED)
def test_probes_ask_readyz_to_start_and_serve_and_livez_to_live_on_port_3000(where: str) -> None:
    _, container = served_pods()[where]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        request = container[probe]["httpGet"]
        assert ports.get(request["port"], request["port"]) == PORT, probe
        paths[probe] = request["path"]
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    assert startup_budget_s(container) >= 600


@pytest.mark.parametrize("where", SERVED)
def test_grace_period_outlasts_the_drain(where: str) -> None:
    pod, container = served_pods()[where]
    env = env_of(container)
    delay, timeout = (float(env[variable]) for variable in DRAIN_VARIABLES)
    assert delay > 0, "without a drain delay, requests still routed to the pod after SIGTERM are refused"
    assert pod["terminationGracePeriodSeconds"] > delay + timeout


@pytest.mark.parametrize("where", SERVED)
def test_pod_runs_as_non_root_on_a_read_only_root_filesystem(where: str) -> None:
    pod, container = served_pods()[where]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("where", SERVED)
def test_database_url_and_admin_token_come_from_the_secret_of_the_example(where: str) -> None:
    _, container = served_pods()[where]
    secret = one(SECRET_EXAMPLE)
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    env = env_of(container)
    for variable in ("INSPECTION_THRESHOLDS_DB", "INSPECTION_ADMIN_TOKEN"):
        reference = env[variable]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"], variable
        assert reference["key"] in keys, variable
        assert reference.get("optional", False) is False, variable


def test_placeholder_secret_is_never_applied_with_a_kustomization() -> None:
    for directory in [*OVERLAYS.values(), KEDA]:
        assert "Secret" not in {resource["kind"] for resource in build(directory)}


def test_service_pdb_and_autoscaler_select_and_target_the_deployment() -> None:
    resources = rendered("cpu")
    deployment = resources["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = resources["Service"]["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", PORT, "http")
    assert resources["Service"]["spec"]["selector"].items() <= labels.items()
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resources["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


# --- autoscaling -------------------------------------------------------------------------------


def autoscaler_targets(autoscaler: dict[str, Any]) -> dict[str, str]:
    return {
        metric["pods"]["metric"]["name"]: metric["pods"]["target"]["averageValue"]
        for metric in autoscaler["spec"]["metrics"]
        if metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    }


def test_autoscaler_scales_on_in_flight_and_queue_depth_per_pod() -> None:
    for overlay in OVERLAYS:
        autoscaler = rendered(overlay)["HorizontalPodAutoscaler"]
        assert set(autoscaler_targets(autoscaler)) == {"inspection_in_flight", "inspection_queue_depth"}
        assert len(autoscaler["spec"]["metrics"]) == 2
    assert float(autoscaler_targets(rendered("gpu")["HorizontalPodAutoscaler"])["inspection_in_flight"]) > float(
        autoscaler_targets(rendered("cpu")["HorizontalPodAutoscaler"])["inspection_in_flight"]
    )


def test_autoscaler_scales_up_at_once_and_down_slowly() -> None:
    for behavior in (
        rendered("cpu")["HorizontalPodAutoscaler"]["spec"]["behavior"],
        one(SCALED_OBJECT)["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
    ):
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
        assert max(policy["value"] for policy in behavior["scaleDown"]["policies"] if policy["type"] == "Pods") == 1
    autoscaler = rendered("cpu")["HorizontalPodAutoscaler"]["spec"]
    assert autoscaler["minReplicas"] >= 2, "one replica could not be drained or evicted without an outage"


def test_autoscaler_metrics_are_the_ones_the_adapter_serves_per_pod() -> None:
    served = {}
    for rule in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]:
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert re.fullmatch(r"sum\(<<\.Series>>\{<<\.LabelMatchers>>\}\) by \(<<\.GroupBy>>\)", rule["metricsQuery"])
        served[rule["name"]["as"]] = metric_of(rule["seriesQuery"])
        assert re.fullmatch(rule["name"]["matches"], served[rule["name"]["as"]])
    for overlay in OVERLAYS:
        for name in autoscaler_targets(rendered(overlay)["HorizontalPodAutoscaler"]):
            assert served.get(name) == name


def test_every_metric_the_deployment_files_name_is_one_the_service_registers() -> None:
    """Autoscaling on a metric the service does not export would scale on nothing, silently."""
    registered = registered_metrics()
    named = set()
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".md"):
            named |= set(re.findall(r"(?<![\w.])inspection_[a-z_]+[a-z]", path.read_text()))
    assert {"inspection_in_flight", "inspection_queue_depth", "inspection_refusals_total"} <= named
    assert sorted(named - registered) == []


def test_keda_kustomization_puts_the_scaled_object_in_place_of_the_autoscaler() -> None:
    resources = build(KEDA)
    assert sorted(resource["kind"] for resource in resources) == [
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Service",
    ]
    for resource in resources:
        validate_resource(resource)
    by_kind = {resource["kind"]: resource for resource in resources}
    assert by_kind["ScaledObject"]["metadata"]["namespace"] == by_kind["Deployment"]["metadata"]["namespace"]


def test_keda_triggers_mirror_the_cpu_autoscaler() -> None:
    spec = one(SCALED_OBJECT)["spec"]
    autoscaler = rendered("cpu")["HorizontalPodAutoscaler"]
    thresholds = {
        metric_of(trigger["metadata"]["query"]): trigger["metadata"]["threshold"] for trigger in spec["triggers"]
    }
    assert thresholds == autoscaler_targets(autoscaler)
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]  # the CRD's CEL rule, which validation skips
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        autoscaler["spec"]["minReplicas"],
        autoscaler["spec"]["maxReplicas"],
    )
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == autoscaler["spec"]["behavior"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", rendered("cpu")["Deployment"]["metadata"]["name"])
    assert all(trigger["type"] == "prometheus" and "metricType" not in trigger for trigger in spec["triggers"])


def test_prometheus_queries_select_the_pods_of_their_own_deployment() -> None:
    deployment = rendered("cpu")["Deployment"]["metadata"]
    pod_of_the_deployment = f"{deployment['name']}-7d9c6b5f4-x2x7q"
    for trigger in one(SCALED_OBJECT)["spec"]["triggers"]:
        matchers = label_matchers(trigger["metadata"]["query"])
        assert matchers["namespace"] == ("=", deployment["namespace"])
        assert matchers["pod"][0] == "=~" and re.fullmatch(matchers["pod"][1], pod_of_the_deployment)
    for name, (predictor, _) in kserve_pods().items():
        service = one(KSERVE / name)["metadata"]
        for metric in predictor["autoScaling"]["metrics"]:
            matchers = label_matchers(metric["external"]["metric"]["query"])
            assert matchers["namespace"] == ("=", service["namespace"])
            assert re.fullmatch(matchers["pod"][1], f"{service['name']}-predictor-7d9c6b5f4-x2x7q")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian's prometheus)")
def test_every_prometheus_query_parses(tmp_path: Path) -> None:
    queries = promql_queries()
    rules = {
        "groups": [
            {
                "name": "deploy",
                "rules": [
                    {"record": f"deploy:query_{index}", "expr": query} for index, query in enumerate(queries.values())
                ],
            }
        ]
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout


# --- KServe ------------------------------------------------------------------------------------


def test_kserve_runtime_speaks_v2_and_serves_the_model_format_the_inference_service_asks_for() -> None:
    runtime = one(KSERVE / "servingruntime.yaml")
    model = one(KSERVE / "inferenceservice.yaml")["spec"]["predictor"]["model"]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    formats = {(fmt["name"], fmt.get("version")) for fmt in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert "storageUri" not in model, "the models are in the image"


@pytest.mark.parametrize("name", KSERVE_INFERENCE_SERVICES)
def test_kserve_runs_the_image_and_settings_of_the_base_deployment(name: str) -> None:
    predictor, container = kserve_pods()[name]
    base = inspection_container(rendered("cpu")["Deployment"]["spec"]["template"]["spec"])
    service = one(KSERVE / name)
    assert container["name"] == "kserve-container"
    assert container["image"] == base["image"]
    assert container["ports"][0]["containerPort"] == PORT
    assert env_of(container) == env_of(base)
    for field in ("startupProbe", "readinessProbe", "livenessProbe", "resources", "volumeMounts"):
        assert container[field] == base[field], field
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    autoscaler = rendered("cpu")["HorizontalPodAutoscaler"]["spec"]
    targets = {
        metric_of(m["external"]["metric"]["query"]): m["external"]["target"]["value"]
        for m in predictor["autoScaling"]["metrics"]
    }
    assert targets == autoscaler_targets(rendered("cpu")["HorizontalPodAutoscaler"])
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        autoscaler["minReplicas"],
        autoscaler["maxReplicas"],
    )
