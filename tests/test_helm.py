"""The Helm chart (deploy/helm/somaagent01), checked by the real helm and kubeconform that ``make tools`` builds.

``helm lint --strict``; ``helm template`` of the defaults and of variants piped through ``kubeconform -strict``
against Kubernetes' schemas of the oldest and the newest version prepared, the ServiceMonitor against the
Prometheus operator's CRD schema; the renders read back as the worker reads its environment (an unknown SOMA_*
name or a refused value stops it at start-up); what the chart refuses to render. No server is needed: seconds.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app import tracing
from app.settings import PREFIX, Settings
from deploy.localstack.base import StackError
from deploy.localstack.go_tools import HELM, KUBECONFORM
from deploy.localstack.k8s_schemas import KUBERNETES_SCHEMAS, PROMETHEUS_OPERATOR_SCHEMAS

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "somaagent01"
SETTING_NAMES = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}

JWT_SECRET = "helm-test-secret-of-32-bytes-or-more"
REQUIRED: dict[str, Any] = {
    "kafka": {"bootstrap": "kafka-0.kafka:9092,kafka-1.kafka:9092,kafka-2.kafka:9092"},
    "redis": {"url": "redis://:redis-password@redis:6379/0"},
    "postgres": {"dsn": "postgresql://soma:pg-password@postgres:5432/soma"},
}
PUBLIC_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
SASL_PASSWORD = "kafka-sasl-password"
# what the operator's own Secret holds in the existingSecret variant
OPERATOR_SECRET = {
    "SOMA_POSTGRES_DSN": "postgresql://soma:operator-pg-password@pg.db:5432/soma",
    "SOMA_REDIS_URL": "rediss://:operator-redis-password@redis.cache:6380/0",
    "SOMA_JWT_SECRET": JWT_SECRET,
}
# the values of each variant; its release name (r-<variant>) says which one a kubeconform message is about
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {**REQUIRED, "jwt": {"secret": JWT_SECRET}},
    "existing-secret": {"kafka": REQUIRED["kafka"], "existingSecret": "soma-operator-secret"},
    "jwks": {
        **REQUIRED,
        "jwt": {"jwksUrl": "https://issuer.example.com/jwks.json", "issuer": "https://issuer.example.com/"},
    },
    "autoscaling-off": {**REQUIRED, "jwt": {"secret": JWT_SECRET}, "autoscaling": {"enabled": False}},
    "replicas-5": {**REQUIRED, "jwt": {"secret": JWT_SECRET}, "autoscaling": {"enabled": False}, "replicaCount": 5},
    # every optional branch: a public key, SASL over TLS with a client certificate, OPA, origins, more settings
    "everything": {
        **REQUIRED,
        "jwt": {"publicKey": PUBLIC_KEY, "algorithms": "ES256", "audience": "somaagent"},
        "kafka": {
            "bootstrap": "kafka.example.com:9094",
            "topics": {"prefix": "prod.", "partitions": 24},
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "soma", "password": SASL_PASSWORD},
            "tls": {"enabled": True, "caSecret": "kafka-ca", "clientCertSecret": "kafka-client"},
        },
        "opa": {"url": "http://opa.policy:8181"},
        "web": {"allowedOrigins": ["https://app.example.com", "https://admin.example.com"]},
        "settings": {"SOMA_MAX_BODY_BYTES": 2097152, "SOMA_JWT_LEEWAY_SECONDS": 5.5, "SOMA_TOOL_TIMEOUTS": "echo=1"},
        "metrics": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}}},
        "image": {"repository": "registry.example.com/somaagent01", "tag": "0.1.0-rc1"},
        "tracing": {"otlpEndpoint": "http://otel-collector.observability:4318", "samplerArg": 0.25},
    },
}
ARGS = ["faust", "-A", "app", "worker", "-l", "info"]


def cache_dir() -> Path:
    return Settings.from_env().cache_dir  # where `make tools` put them (SOMA_CACHE_DIR)


def require(tool: Any) -> Path:
    """A tool or schema set of the cache; the test fails (never skips) naming `make tools` when it is missing."""
    try:
        path: Path = tool.require(cache_dir())
    except StackError as exc:
        pytest.fail(str(exc))
    return path


def kubernetes_versions() -> list[str]:
    require(KUBERNETES_SCHEMAS)
    return KUBERNETES_SCHEMAS.kubernetes_versions(cache_dir())


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """helm with ``values`` as its values file (on stdin)."""
    argv = [str(require(HELM)), *args]
    if values is not None:
        argv += ["-f", "-"]
    stdin = yaml.safe_dump(values) if values is not None else None
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def template(values: dict[str, Any], release: str = "r") -> subprocess.CompletedProcess[str]:
    return helm("template", release, str(CHART), "--kube-version", kubernetes_versions()[-1], values=values)


@functools.cache
def rendered(variant: str) -> str:
    done = template(VARIANTS[variant], f"r-{variant}")
    assert done.returncode == 0, f"{variant}: {done.stderr}"
    return done.stdout


def manifests(variant: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered(variant)) if doc]


def one(variant: str, kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests(variant) if doc["kind"] == kind]
    assert len(found) == 1, f"{variant}: {len(found)} {kind}"
    return found[0]


def container(variant: str) -> dict[str, Any]:
    containers = one(variant, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def worker_env(variant: str) -> dict[str, str]:
    """The SOMA_* environment a worker of this render starts with: its ConfigMap, then its Secret's keys."""
    docs = manifests(variant)
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    if existing := VARIANTS[variant].get("existingSecret"):
        secrets[existing] = OPERATOR_SECRET
    env: dict[str, str] = {}
    worker = container(variant)
    for source in worker["envFrom"]:
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in worker["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]], f"{variant}: {ref['key']} is not in Secret {ref['name']}"
        env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def kubeconform(stream: str, version: str) -> tuple[int, dict[str, Any], str]:
    """kubeconform -strict on ``stream`` for Kubernetes ``version``: (exit status, its JSON report, stderr)."""
    require(KUBERNETES_SCHEMAS)
    require(PROMETHEUS_OPERATOR_SCHEMAS)
    done = subprocess.run(
        [str(require(KUBECONFORM)), "-strict", "-summary", "-output", "json", "-verbose",
         "-kubernetes-version", version,
         "-schema-location", KUBERNETES_SCHEMAS.location(cache_dir()),
         "-schema-location", PROMETHEUS_OPERATOR_SCHEMAS.location(cache_dir()),
         "-"],
        input=stream, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


@pytest.mark.parametrize("variant", ["defaults", "everything"])
def test_the_chart_lints_strictly(variant: str) -> None:
    done = helm("lint", "--strict", str(CHART), "--kube-version", kubernetes_versions()[-1], values=VARIANTS[variant])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout, done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_every_render_is_valid_kubernetes(which: str) -> None:
    """Every variant's every resource is valid (strict: no unknown field) against the schemas of the oldest and
    the newest Kubernetes the chart claims (Chart.yaml kubeVersion), the ServiceMonitor against its CRD's."""
    versions = kubernetes_versions()
    version = versions[0] if which == "oldest" else versions[-1]
    code, report, stderr = kubeconform("".join(rendered(v) for v in VARIANTS), version)
    statuses = {(r["kind"], r["name"]): (r["status"], r["msg"]) for r in report.get("resources", [])}
    bad = {key: value for key, value in statuses.items() if value[0] != "statusValid"}
    assert code == 0 and not bad, f"kubernetes {version}: {bad or report} {stderr}"
    expected = {(d["kind"], d["metadata"]["name"]) for v in VARIANTS for d in manifests(v)}
    assert set(statuses) == expected
    summary = report["summary"]
    assert (summary["valid"], summary["invalid"], summary["errors"], summary["skipped"]) == (len(expected), 0, 0, 0)
    kinds = {kind for kind, _ in expected}
    assert kinds == {
        "ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "ServiceMonitor",
    }  # fmt: skip


def test_the_chart_claims_the_kubernetes_versions_it_is_validated_for() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={kubernetes_versions()[0]}-0"


def test_kubeconform_refuses_what_the_schemas_do_not_allow() -> None:
    """The schemas are really read: a field Kubernetes does not have, a wrong type, an unknown ServiceMonitor
    field each make their resource invalid (a missing schema would be an error, never a pass)."""
    docs = manifests("defaults")
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
        elif doc["kind"] == "HorizontalPodAutoscaler":
            doc["spec"]["maxReplicas"] = "twelve"
        elif doc["kind"] == "ServiceMonitor":
            doc["spec"]["endpoints"][0]["scrapeEvery"] = "30s"
    code, report, _ = kubeconform(yaml.safe_dump_all(docs), kubernetes_versions()[-1])
    invalid = {r["kind"]: r["msg"] for r in report["resources"] if r["status"] == "statusInvalid"}
    assert code == 1 and set(invalid) == {"Deployment", "HorizontalPodAutoscaler", "ServiceMonitor"}, report
    assert "paht" in invalid["Deployment"] and "scrapeEvery" in invalid["ServiceMonitor"], invalid
    assert report["summary"]["errors"] == 0 and report["summary"]["valid"] == len(docs) - 3


REFUSED = {
    "no key source": (REQUIRED, "authentication is on: set one JWT key source"),
    "two key sources": (
        {**REQUIRED, "jwt": {"secret": JWT_SECRET, "jwksUrl": "https://issuer.example.com/jwks.json"}},
        "set one JWT key source, not jwt.secret and jwt.jwksUrl",
    ),
    "dev tokens": (
        {**VARIANTS["defaults"], "settings": {"SOMA_DEV_TOKENS": "1"}},
        "settings.SOMA_DEV_TOKENS: the development token issuer signs a token for anyone; never in a deployment",
    ),
    "authentication off": (
        {**VARIANTS["defaults"], "settings": {"SOMA_AUTH_REQUIRED": "0"}},
        "settings.SOMA_AUTH_REQUIRED is set by the chart from its values",
    ),
    "a misspelt setting": (
        {**VARIANTS["defaults"], "settings": {"SOMA_TOPIC_PARTITON": "6"}},
        "settings.SOMA_TOPIC_PARTITON: not a setting of the worker",
    ),
    "a secret as a setting": (
        {**VARIANTS["defaults"], "settings": {"SOMA_JWT_SECRET": JWT_SECRET}},
        "settings.SOMA_JWT_SECRET is a secret",
    ),
    "no kafka": ({**VARIANTS["defaults"], "kafka": {}}, "kafka.bootstrap is required"),
    "no postgres": ({**VARIANTS["defaults"], "postgres": {}}, "postgres.dsn is required (or existingSecret)"),
    "a DSN beside existingSecret": (
        {**VARIANTS["existing-secret"], "postgres": REQUIRED["postgres"]},
        "with existingSecret, put SOMA_JWT_SECRET, SOMA_REDIS_URL, SOMA_POSTGRES_DSN",
    ),
    "more minimum than maximum": (
        {**VARIANTS["defaults"], "autoscaling": {"minReplicas": 13}},
        "autoscaling.minReplicas (13) is above autoscaling.maxReplicas (12)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_chart_refuses_to_render_what_would_run_open_or_not_start(case: str) -> None:
    values, message = REFUSED[case]
    done = template(values)
    assert done.returncode != 0, f"{case}: rendered\n{done.stdout[:500]}"
    assert message in done.stderr, done.stderr


def test_the_chart_knows_exactly_the_worker_settings() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "somaagent01.settingNames" -}}(.*?){{- end', helpers, re.S)
    assert block is not None
    names = set(block[1].split())
    assert names == SETTING_NAMES, (
        "templates/_helpers.tpl somaagent01.settingNames must list app/settings.py's settings: "
        f"add {sorted(SETTING_NAMES - names)}, remove {sorted(names - SETTING_NAMES)}"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_soma_name_rendered_is_a_setting(variant: str) -> None:
    env = worker_env(variant)
    named = set(re.findall(r"\bSOMA_[A-Z0-9_]+", rendered(variant))) | {n for n in env if not n.startswith("OTEL_")}
    assert named <= SETTING_NAMES, f"not settings of the worker: {sorted(named - SETTING_NAMES)}"
    assert "SOMA_DEV_TOKENS" not in named


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_rendered_settings_parse_as_the_worker_parses_them(variant: str) -> None:
    env = worker_env(variant)
    settings = Settings.from_env(env)  # what the worker does first: a refused value fails here, not in a pod
    settings.validate()
    values = VARIANTS[variant]
    assert settings.auth_required and not settings.dev_tokens
    assert [bool(settings.jwt_secret), bool(settings.jwt_public_key), bool(settings.jwks_url)].count(True) == 1
    assert (settings.topic_replication, settings.topic_min_insync_replicas) == (3, 2)
    assert settings.topic_partitions == values["kafka"].get("topics", {}).get("partitions", 12)
    assert settings.kafka_bootstrap == values["kafka"]["bootstrap"]
    assert ipaddress.ip_address(settings.web_host).is_unspecified  # the probes and the Service reach the pod's IP
    worker = container(variant)
    assert [p["containerPort"] for p in worker["ports"] if p["name"] == "http"] == [settings.web_port]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert str(settings.data_dir) == mounts["data"]
    assert not {"SOMA_STACK_DIR", "SOMA_CACHE_DIR", "SOMA_KAFKA_BROKERS"} & set(env)


def test_the_optional_settings_arrive_as_given() -> None:
    settings = Settings.from_env(worker_env("everything"))
    assert settings.jwt_public_key == PUBLIC_KEY and settings.jwt_algorithm_list() == ("ES256",)
    assert (settings.kafka_sasl_mechanism, settings.kafka_sasl_username) == ("SCRAM-SHA-512", "soma")
    assert settings.kafka_sasl_password == SASL_PASSWORD
    assert settings.kafka_ssl_cafile == "/etc/somaagent/kafka-ca/ca.crt"
    assert (settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile) == (
        "/etc/somaagent/kafka-client/tls.crt",
        "/etc/somaagent/kafka-client/tls.key",
    )
    assert settings.max_body_bytes == 2097152 and settings.jwt_leeway_seconds == 5.5  # no 2.097152e+06
    assert settings.allowed_origins() == {"https://app.example.com", "https://admin.example.com"}
    assert (settings.topic_prefix, settings.opa_url) == ("prod.", "http://opa.policy:8181")
    mounts = {m["mountPath"] for m in container("everything")["volumeMounts"]}
    assert {"/etc/somaagent/kafka-ca", "/etc/somaagent/kafka-client"} <= mounts


@pytest.mark.parametrize("variant", ["defaults", "everything"])
def test_secrets_are_only_in_the_secret(variant: str) -> None:
    text = rendered(variant)
    for secret in (JWT_SECRET, SASL_PASSWORD, REQUIRED["postgres"]["dsn"], REQUIRED["redis"]["url"], "pg-password"):
        assert secret not in text, f"{secret!r} in plain text"
    secret_keys = set(one(variant, "Secret")["data"])
    assert secret_keys & set(one(variant, "ConfigMap")["data"]) == set()
    assert {"SOMA_POSTGRES_DSN", "SOMA_REDIS_URL"} <= secret_keys


def test_the_deployment_runs_the_worker_as_the_probes_expect() -> None:
    deployment = one("defaults", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    worker = container("defaults")
    # the image's entrypoint (migrations, then the command) stays: only its arguments are given
    assert worker["args"] == ARGS and "command" not in worker
    probes = {name: worker[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"] == {"path": "/health", "port": "http"}
    assert probes["livenessProbe"] == probes["startupProbe"] == {"path": "/health/live", "port": "http"}
    assert worker["readinessProbe"]["timeoutSeconds"] > Settings.health_timeout_seconds
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert not pod["automountServiceAccountToken"]
    # a read-only root: what the worker writes goes to emptyDirs
    volumes = {v["name"]: v for v in pod["volumes"]}
    data_dir = Settings.from_env(worker_env("defaults")).data_dir.as_posix()
    assert {m["mountPath"] for m in worker["volumeMounts"]} == {"/tmp", data_dir}
    assert all("emptyDir" in volumes[m["name"]] for m in worker["volumeMounts"])
    # time to leave the group cleanly, after the Service has stopped sending to the pod
    pre_stop = int(worker["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + 3 * Settings.kafka_session_timeout_seconds
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_replicas_are_the_autoscalers_or_the_values() -> None:
    assert "replicas" not in one("defaults", "Deployment")["spec"]  # the HPA owns the count
    assert one("autoscaling-off", "Deployment")["spec"]["replicas"] == 3
    assert one("replicas-5", "Deployment")["spec"]["replicas"] == 5
    for variant in ("autoscaling-off", "replicas-5"):
        assert "HorizontalPodAutoscaler" not in {d["kind"] for d in manifests(variant)}


@pytest.mark.parametrize("variant", ["defaults", "everything"])
def test_the_autoscaler_follows_the_consumer_lag_up_to_one_worker_per_partition(variant: str) -> None:
    hpa = one(variant, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(variant, "Deployment")["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "soma_consumer_lag"
    service = one(variant, "Service")["metadata"]["name"]
    assert metric["external"]["metric"]["selector"] == {"matchLabels": {"service": service}}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1000"}
    assert hpa["spec"]["maxReplicas"] == int(one(variant, "ConfigMap")["data"]["SOMA_TOPIC_PARTITIONS"])
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]


def test_the_service_monitor_scrapes_metrics_on_the_web_port() -> None:
    """Also checked by kubeconform against the CRD schema; here what the schema cannot know."""
    monitor = one("everything", "ServiceMonitor")
    service = one("everything", "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("http", "http")
    assert service["spec"]["selector"] == one("everything", "Deployment")["spec"]["selector"]["matchLabels"]
    off = template({**VARIANTS["defaults"], "metrics": {"serviceMonitor": {"enabled": False}}})
    assert off.returncode == 0 and "kind: ServiceMonitor" not in off.stdout


def test_the_disruption_budget_lets_one_worker_go_at_a_time() -> None:
    pdb = one("defaults", "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = one("defaults", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_traces_are_exported_where_the_values_say_and_only_then() -> None:
    env = worker_env("everything")
    assert tracing.wanted(env)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.25")
    assert env["OTEL_SERVICE_NAME"]
    defaults = worker_env("defaults")
    assert not tracing.wanted(defaults) and not any(name.startswith("OTEL_") for name in defaults)
