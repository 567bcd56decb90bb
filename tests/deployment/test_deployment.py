"""The deployment files agree with the code and with each other, checked offline.

- docker/alerts.yml: `promtool check rules` and `promtool test rules docker/alerts_test.yml`
  (promtool from Debian's `prometheus` package, which scripts/setup.sh installs; missing, the
  tests fail naming that script: none is skipped).
- Every PromQL expression (alerts, their test series, the Grafana dashboard) names only metrics
  and labels of docs/operations.md's table.
- docker/compose.yaml: the compose specification's JSON schema (check-jsonschema's vendored
  copy), and ports, topics, paths and environment against the shipped topology and the Dockerfile.
- deploy/k8s: Kubernetes' own schemas for the core kinds (kubernetes-validate, strict), a
  structural schema written here for KEDA's ScaledObject and TriggerAuthentication (no CRD schema
  offline), and the same cross-checks with the topology.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pipeline.topology.loader import ENV_OVERRIDES, load_topology, parse_topology
from pipeline.topology.schema import Topology

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "k8s"
TOPOLOGY = ROOT / "topologies" / "recommendations.yaml"
DOC = ROOT / "docs" / "operations.md"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "pipeline.json"
KUBERNETES_VERSION = "1.30.0"

# The alerts and the thresholds in their expressions (p95 latency 100 ms, error rate 1 %, queue 1,000;
# an arm's 30-minute hit@K under 80 % of its day, on 200 judged outcomes).
ALERTS = {
    "InferenceLatencyHigh": ["histogram_quantile(0.95", "inference_duration_seconds_bucket", "> 0.1"],
    "PipelineErrorRateHigh": ["pipeline_dead_letters_total", "pipeline_events_finished_total", "> 0.01"],
    "RequestQueueHigh": ["request_queue_size > 1000"],
    "ConsumerLagGrowing": ["pipeline_consumer_lag_records", "deriv("],
    "PipelineStalled": ["pipeline_stalled == 1"],
    "OldestUnfinishedRecordOld": ["pipeline_oldest_unfinished_age_seconds"],
    "DeadLetterBudgetHolding": ["pipeline_dead_letter_budget_holding"],
    "SinkRefusingDeadLetters": ["pipeline_sink_refusing_dead_letters == 1"],
    "ArmHitRateFalling": [
        'sum by (job, arm, version) (rate(pipeline_outcomes_total{outcome="hit"}[30m]))',
        'sum by (job, arm, version) (rate(pipeline_outcomes_total{outcome=~"hit|miss"}[1d]))',
        "< 0.8 *",
        'increase(pipeline_outcomes_total{outcome=~"hit|miss"}[30m])) >= 200',
    ],
    "ExperimentArmStopped": ["increase(pipeline_experiment_arm_stops_total[10m]) > 0"],
}
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def require_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"{name} is not installed: it is a dev dependency (scripts/setup.sh installs it)")


def promtool(*args: str, cwd: Path = DOCKER) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool not found: run scripts/setup.sh as root (it installs Debian's prometheus "
            "package), or `apt-get install -y --no-install-recommends prometheus`"
        )
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def drain_bound_s(topology: Topology) -> float:
    """How long `pipeline run` may take to stop after SIGTERM (docs/operations.md)."""
    return topology.source.drain_timeout_ms / 1000 + 5


# --- the metrics table --------------------------------------------------------------------------


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """name → (type, labels) from docs/operations.md's "## Metrics" table."""
    section = DOC.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \|([^|]*)\|", section, re.M)
    assert rows and len(rows) == section.count("\n| `"), "a row of docs/operations.md's table not read"
    return {name: (kind, {x.strip() for x in labels.split(",") if x.strip()}) for name, kind, labels in rows}


def metric_family(name: str, documented: dict[str, tuple[str, set[str]]]) -> str | None:
    """The documented family a sample name belongs to (a histogram's _bucket/_sum/_count)."""
    if name in documented:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and documented.get(base, ("",))[0] == "histogram":
            return base
    return None


PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


def promql_names(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names matched per metric, label names in groupings) of one expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    matchers: dict[str, set[str]] = {}
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        matchers.setdefault(name, set()).update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    grouping = {x.strip() for group in re.findall(GROUPING, expr) for x in group.split(",") if x.strip()}
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges, subqueries, $__rate_interval
    bare = re.sub(GROUPING, "", bare)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
        if bare[m.end() :].lstrip().startswith("(") or m.group().lower() in PROMQL_KEYWORDS:
            continue  # a function or an aggregation, or an operator
        names.add(m.group())
    return names, matchers, grouping


def check_promql(expr: str, where: str, documented: dict[str, tuple[str, set[str]]]) -> set[str]:
    """Assert that expr names documented metrics and labels only; returns the families used."""
    names, matchers, grouping = promql_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    families = set()
    for name in names:
        family = metric_family(name, documented)
        assert family is not None, f"{where}: {name} is not in docs/operations.md's metrics table"
        families.add(family)
    allowed = set(SCRAPE_LABELS)
    for family in families:
        kind, labels = documented[family]
        allowed |= labels | ({"le"} if kind == "histogram" else set())
    for name, labels in matchers.items():
        family = metric_family(name, documented)
        assert family is not None, f"{where}: {name} is not documented"
        kind, own = documented[family]
        own_allowed = own | SCRAPE_LABELS | ({"le"} if name.endswith("_bucket") else set())
        assert labels <= own_allowed, f"{where}: {name} has no label {sorted(labels - own_allowed)}"
    assert grouping <= allowed, f"{where}: grouping by unknown labels {sorted(grouping - allowed)}"
    return families


def test_promql_extraction_sees_metrics_not_functions_or_labels() -> None:
    names, matchers, grouping = promql_names(
        'histogram_quantile(0.95, sum by (job, le) (rate(inference_duration_seconds_bucket{status!="ok"}'
        "[5m]))) > 0.1 and on(job) deriv(sum(pipeline_stalled)[10m:1m]) > 1e3"
    )
    assert names == {"inference_duration_seconds_bucket", "pipeline_stalled"}
    assert matchers == {"inference_duration_seconds_bucket": {"status"}}
    assert grouping == {"job", "le"}
    documented = documented_metrics()
    with pytest.raises(AssertionError, match="not in docs"):
        check_promql("rate(pipeline_no_such_metric_total[5m])", "probe", documented)
    with pytest.raises(AssertionError, match="no label"):
        check_promql('pipeline_stalled{lane="x"}', "probe", documented)


# --- alert rules ---------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(DOCKER / "alerts.yml")["groups"] for rule in group["rules"]]


def test_alert_rules() -> None:
    """promtool accepts the rules and the Prometheus config, and every rule test passes."""
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")
    promtool("check", "config", "prometheus.yml")  # also loads its rule_files: alerts.yml
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_is_labelled_annotated_and_tested_both_ways() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == set(ALERTS)
    for rule in rules:
        name = rule["alert"]
        for needle in ALERTS[name]:
            assert needle in " ".join(rule["expr"].split()), (name, needle)
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
    # Each alert has an evaluation where it fires (exp_alerts lists exactly what fires, so the
    # series beside it that must not fire are checked too) and one where it must not.
    firing, silent = set(), set()
    for case in load_yaml(DOCKER / "alerts_test.yml")["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == set(ALERTS), set(ALERTS) - firing
    assert silent == set(ALERTS), set(ALERTS) - silent


def test_alerts_and_their_test_series_use_documented_metrics() -> None:
    documented = documented_metrics()
    for rule in alert_rules():
        check_promql(rule["expr"], f"alerts.yml {rule['alert']}", documented)
    for case in load_yaml(DOCKER / "alerts_test.yml")["tests"]:
        for series in case["input_series"]:
            check_promql(series["series"], "alerts_test.yml", documented)


# --- Grafana -------------------------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_dashboard_uses_documented_metrics_and_parses(tmp_path: Path) -> None:
    documented = documented_metrics()
    used: set[str] = set()
    exprs = []
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= check_promql(target["expr"], f"dashboard {panel['title']!r}", documented)
            exprs.append(target["expr"].replace("$__rate_interval", "5m"))
    # Every expression parses: promtool checks them as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    probe = tmp_path / "dashboard_rules.yml"
    probe.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(probe))
    # The panels: throughput in and out, end-to-end and inference latency, lag per
    # partition, lanes (latency, ration), dead letters by reason, the pipeline's states.
    assert {
        "pipeline_events_consumed_total",
        "pipeline_recommendations_total",
        "pipeline_end_to_end_seconds",
        "inference_duration_seconds",
        "pipeline_consumer_lag_records",
        "pipeline_batch_latency_seconds",
        "pipeline_lane_rate_limit_rows_per_second",
        "pipeline_dead_letters_total",
        "pipeline_stalled",
        "pipeline_model_contract_pending",
        # online quality and experiments, per arm (docs/operations.md "## Online quality")
        "pipeline_outcomes_total",
        "pipeline_outcome_any_hits_total",
        "pipeline_outcome_hit_rank",
        "pipeline_arm_recommendations_total",
        "pipeline_arm_inference_seconds",
        "pipeline_experiment_arm_serving",
    } <= used
    text = DASHBOARD.read_text()
    for metric, by in (("pipeline_end_to_end_seconds", "le"), ("inference_duration_seconds", "model, le")):
        for quantile in ("0.5", "0.99"):
            wanted = f"histogram_quantile({quantile}, sum by ({by}) (rate({metric}_bucket"
            assert wanted in text, wanted
    assert "by (topic, partition) (pipeline_consumer_lag_records)" in text
    assert "sum by (reason) (rate(pipeline_dead_letters_total" in text
    # Online quality per arm and version (docs/operations.md "## Online quality"), over 15 minutes.
    quality = {p["title"]: p["targets"] for p in dashboard_panels()}
    judged = 'sum by (arm, version) (rate(pipeline_outcomes_total{outcome=~"hit|miss"}[15m]))'
    ((hit_at_k, legend),) = [(t["expr"], t["legendFormat"]) for t in quality["Online hit@K per arm"]]
    assert (
        hit_at_k == f'sum by (arm, version) (rate(pipeline_outcomes_total{{outcome="hit"}}[15m])) / {judged}'
    )
    assert legend == "{{arm}} v{{version}}"
    # prometheus_client writes bucket bounds as floats ("5.0"); Prometheus 3 normalizes `le` so too.
    hits_at_5 = [t["expr"] for t in quality["Any-hit rate and hits@5 per arm"]]
    assert any(
        e.startswith('sum by (arm, version) (rate(pipeline_outcome_hit_rank_bucket{le="5.0"}')
        for e in hits_at_5
    )
    assert all(e.endswith(f" / {judged}") for e in hits_at_5)
    p99 = "histogram_quantile(0.99, sum by (arm, le) (rate(pipeline_arm_inference_seconds_bucket"
    assert any(t["expr"].startswith(p99) for t in quality["Inference p99 per arm"])


DASHBOARD_ROWS = {
    "Throughput": ["Events in / out", "Backpressure"],
    "Latency": ["End-to-end latency", "Inference latency"],
    "Kafka": ["Consumer lag per partition", "Oldest unfinished record"],
    "Lanes": ["Batch latency per lane", "Lane rations"],
    "Failures": [
        "Dead letters by reason",
        "Triton failures and retries",
        "Pipeline state",
        "Client and broker errors",
        "Adaptive knobs",
    ],
    "Quality and experiments": [
        "Online hit@K per arm",
        "Any-hit rate and hits@5 per arm",
        "Recommendations per arm",
        "Inference p99 per arm",
        "Arms serving",
        "Catalogue coverage and naming history",
    ],
}


def test_dashboard_layout_and_provisioning() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    # Rows (h=1, full width) in this order, each below everything before it, their panels
    # (h=8, half or full width) under them in reading order; nothing is left out or stray.
    rows: dict[str, list[str]] = {}
    bottom = 0
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        pos = panel["gridPos"]
        if panel["type"] == "row":
            assert (pos["h"], pos["w"], pos["x"], pos["y"]) == (1, 24, 0, bottom), panel["title"]
            rows[panel["title"]] = []
        else:
            assert rows and pos["h"] == 8 and pos["w"] in {12, 24}, panel["title"]
            assert pos["y"] <= bottom, f"{panel['title']!r} leaves a gap above it"
            list(rows.values())[-1].append(panel["title"])
        bottom = max(bottom, pos["y"] + pos["h"])
    assert rows == DASHBOARD_ROWS
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    datasources = load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    for panel in dashboard_panels():
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
    compose = load_yaml(DOCKER / "compose.yaml")["services"]
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in compose["prometheus"]["ports"]
    providers = load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")
    (provider,) = providers["providers"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- compose -------------------------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    return load_yaml(DOCKER / "compose.yaml")["services"]


def dockerfile() -> dict[str, list[str]]:
    """Instruction → its arguments, in order (continuation lines joined)."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def duration_s(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text}"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def shell_script(service: dict[str, Any]) -> str:
    """A service's `sh -c` script as the shell sees it ($$ is compose's escape for $)."""
    assert service["entrypoint"][0] == "/bin/sh" and service["entrypoint"][-1].startswith("-")
    (script,) = service["command"]
    return script.replace("$$", "$")


def test_compose_file_follows_the_compose_specification() -> None:
    require_module("check_jsonschema")
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run(
        [*command, str(DOCKER / "compose.yaml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_pipeline_matches_topology_and_dockerfile() -> None:
    services = compose_services()
    pipeline = services["pipeline"]
    env = {k: str(v) for k, v in pipeline["environment"].items()}
    assert set(env) <= set(ENV_OVERRIDES), "an environment variable the topology loader does not read"
    # The command runs the shipped topology, as copied into the image's working directory.
    build = dockerfile()
    assert pipeline["command"] == json.loads(build["CMD"][-1])
    assert build["ENTRYPOINT"] == ['["pipeline"]'] and "image" in pipeline and "build" in pipeline
    assert "topologies ./topologies" in build["COPY"] and build["WORKDIR"] == ["/app"]
    topology = load_topology(ROOT / pipeline["command"][1], env=env)
    assert topology == load_topology(TOPOLOGY, env=env)
    # One port for /metrics, /healthz, /readyz: exposed, probed, scraped.
    port = topology.operations.metrics_port
    assert port > 0 and topology.operations.bind == "0.0.0.0"
    assert build["EXPOSE"] == [str(port)]
    probe = " ".join(pipeline["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in probe
    scrape = load_yaml(DOCKER / "prometheus.yml")
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "pipeline"]
    assert job["dns_sd_configs"] == [{"names": ["pipeline"], "type": "A", "port": port}]
    # The addresses are services of this file, on the ports they listen on.
    host, _, kafka_port = topology.broker.bootstrap_servers.partition(":")
    assert host == "kafka" and f"PLAINTEXT://kafka:{kafka_port}" in services["kafka"]["environment"][
        "KAFKA_ADVERTISED_LISTENERS"
    ].split(",")
    assert topology.model.url == "triton:8001" and "triton" in services
    # Stops within the drain bound, well inside the grace period; two group members.
    assert duration_s(pipeline["stop_grace_period"]) > drain_bound_s(topology)
    assert pipeline["deploy"]["replicas"] == 2
    assert pipeline["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
        "triton": {"condition": "service_healthy"},
    }


def topics_created() -> dict[str, int]:
    script = shell_script(compose_services()["topics"])
    return {name: int(n) for name, n in re.findall(r"^create (\S+) (\d+)$", script, re.M)}


def test_compose_topics_train_and_producer() -> None:
    services = compose_services()
    topology = load_topology(TOPOLOGY, env={"PIPELINE_BOOTSTRAP_SERVERS": "kafka:9092"})
    # The topics service creates exactly the topology's topics before the pipeline starts.
    created = topics_created()
    assert set(created) == {*topology.source.topics, topology.sink.topic, topology.sink.dead_letter_topic}
    script = shell_script(services["topics"])
    assert f"--bootstrap-server {topology.broker.bootstrap_servers} --create --if-not-exists" in script
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for topic in topology.source.topics:
        assert created[topic] >= services["pipeline"]["deploy"]["replicas"], "an idle replica"
    # A host listener a developer can reach, published on the same port.
    kafka = services["kafka"]["environment"]
    listeners = dict(x.split("://") for x in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(x.split(":") for x in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    assert "HOST://localhost:29092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert listeners["HOST"] == ":29092" and "29092:29092" in services["kafka"]["ports"]
    # train writes the model repository Triton serves, and Triton waits for it.
    train, triton = services["train"], services["triton"]
    assert re.search(r"pipeline train --out /models$", shell_script(train))
    assert "models:/models" in train["volumes"] and "models:/models:ro" in triton["volumes"]
    assert "--model-repository=/models" in triton["command"]
    assert triton["depends_on"] == {"train": {"condition": "service_completed_successfully"}}
    assert "models" in load_yaml(DOCKER / "compose.yaml")["volumes"]
    # The one-shot services and the producer run the pipeline's image, which holds scripts/.
    assert "scripts ./scripts" in dockerfile()["COPY"]
    for name in ("train", "producer"):
        assert services[name]["image"] == services["pipeline"]["image"], name
    # The demo producer: a profile of its own, the input topic, flags the script has.
    producer = services["producer"]
    assert producer["profiles"] == ["demo"]
    script = shell_script(producer)
    assert f"--topic {topology.source.topics[0]} --bootstrap {topology.broker.bootstrap_servers}" in script
    generate = (ROOT / "scripts" / "generate_events.py").read_text()
    for flag in re.findall(r"(--[a-z-]+)", script):
        assert f'add_argument("{flag}"' in generate, flag
    # `pipeline train` is pipeline/recsys/cli.py: --out is one of its flags.
    assert 'add_argument("--out"' in (ROOT / "pipeline" / "recsys" / "cli.py").read_text()
    # The scripts are valid shell.
    for name in ("topics", "train", "producer"):
        done = subprocess.run(
            ["sh", "-n", "-c", shell_script(services[name])], capture_output=True, text=True
        )
        assert done.returncode == 0, (name, done.stderr)


def test_compose_prometheus_loads_the_rules() -> None:
    prometheus = compose_services()["prometheus"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"])
    config = mounts["./prometheus.yml"]
    for rule_file in load_yaml(DOCKER / "prometheus.yml")["rule_files"]:
        assert (DOCKER / rule_file).is_file()
        assert mounts[f"./{rule_file}"] == str(Path(config).parent / rule_file)


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """kind → object, of the kustomization's resources (one of each kind here)."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in k8s_documents(K8S / resource):
            assert doc["kind"] not in objects, doc["kind"]
            objects[doc["kind"]] = doc
    return objects


def generated_configmap() -> dict[str, Any]:
    """The ConfigMap kustomize's configMapGenerator makes (before it adds the name hash)."""
    (generator,) = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    data = {}
    for entry in generator["files"]:
        key, _, file = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = (K8S / file).read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# KEDA 2.x's ScaledObject and TriggerAuthentication as far as these files use them: the fields
# and types of KEDA's CRDs, unknown fields rejected. The HPA behavior is checked with
# Kubernetes' own HorizontalPodAutoscaler schema instead (KEDA passes it on unchanged).
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                **{
                    key: {"type": "integer", "minimum": 0}
                    for key in (
                        "pollingInterval",
                        "cooldownPeriod",
                        "initialCooldownPeriod",
                        "idleReplicaCount",
                        "minReplicaCount",
                        "maxReplicaCount",
                    )
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": STRING_MAP,  # KEDA reads every value as a string
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                }
            },
        },
    },
}
# The Kafka scaler's parameters (KEDA docs, "Apache Kafka" scaler) and their values.
KAFKA_TRIGGER_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
    "limitToPartitionsWithLag", "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls",
    "unsafeSsl", "awsRegion",
}  # fmt: skip
KAFKA_AUTH_PARAMETERS = {
    "sasl", "saslTokenProvider", "username", "password", "tls", "ca", "cert", "key", "keyPassword",
    "keytab", "realm", "kerberosConfig", "kerberosServiceName", "oauthTokenEndpointUri", "scopes",
    "oauthExtensions",
}  # fmt: skip
SASL_MODES = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def test_k8s_core_objects_follow_the_kubernetes_schemas() -> None:
    kv = require_module("kubernetes_validate")
    objects = k8s_objects()
    core = [o for o in objects.values() if not o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in core} == {"Deployment", "Service", "PodDisruptionBudget"}
    secret = k8s_documents(K8S / "secret.example.yaml")
    for obj in [*core, generated_configmap(), *secret]:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    # The ScaledObject's HPA settings, as the HorizontalPodAutoscaler KEDA makes of them.
    spec = objects["ScaledObject"]["spec"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-probe"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "s0-kafka-interactions"},
                        "target": {"type": "AverageValue", "averageValue": "5000"},
                    },
                }
            ],
        },
    }
    kv.validate(hpa, KUBERNETES_VERSION, strict=True)
    # The validator does reject what it should.
    broken = json.loads(json.dumps(objects["Deployment"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)


def test_k8s_keda_objects_have_the_crd_structure() -> None:
    jsonschema = require_module("jsonschema")
    objects = k8s_objects()
    jsonschema.validate(objects["ScaledObject"], SCALED_OBJECT)
    jsonschema.validate(objects["TriggerAuthentication"], TRIGGER_AUTHENTICATION)
    (trigger,) = objects["ScaledObject"]["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_TRIGGER_METADATA, set(meta) - KAFKA_TRIGGER_METADATA
    assert meta["offsetResetPolicy"] in {"earliest", "latest"}
    assert meta["tls"] in {"enable", "disable"} and meta["allowIdleConsumers"] in {"true", "false"}
    assert meta["lagThreshold"].isdigit() and meta["activationLagThreshold"].isdigit()
    auth = objects["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    parameters = [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]]
    assert set(parameters) <= KAFKA_AUTH_PARAMETERS and {"username", "password"} <= set(parameters)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**objects["ScaledObject"], "spec": {**objects["ScaledObject"]["spec"], "maxReplicasCount": 3}},
            SCALED_OBJECT,
        )


def test_k8s_matches_topology_image_and_compose() -> None:
    objects = k8s_objects()
    deployment, service, pdb = objects["Deployment"], objects["Service"], objects["PodDisruptionBudget"]
    scaled, auth = objects["ScaledObject"], objects["TriggerAuthentication"]
    (secret,) = k8s_documents(K8S / "secret.example.yaml")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= set(ENV_OVERRIDES)
    # The secret template holds no value; the topology reads its keys from the environment.
    assert all(value == "" for value in secret["stringData"].values())
    (from_secret,) = container["envFrom"]
    assert from_secret["secretRef"]["name"] == secret["metadata"]["name"]
    credentials = {key: "x" for key in secret["stringData"]}
    # The mounted topology: the generated ConfigMap's file, at the path the container runs.
    configmap = generated_configmap()
    (volume,) = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] and mount["readOnly"]
    assert container["args"][0] == "run"
    path = Path(container["args"][1])
    assert str(path.parent) == mount["mountPath"] and path.name in configmap["data"]
    text = configmap["data"][path.name]
    referenced = set(re.findall(r"\$\{(\w+)", re.sub(r"#.*", "", text)))
    assert referenced == set(secret["stringData"]), "the topology's ${...} and the Secret's keys differ"
    topology = parse_topology(text, str(K8S / path.name), env={**env, **credentials})
    shipped = load_topology(TOPOLOGY, env=env)
    # The shipped topology and nothing else, but for the broker's credentials.
    assert topology.model_dump(exclude={"broker"}) == shipped.model_dump(exclude={"broker"})
    assert topology.broker.bootstrap_servers == shipped.broker.bootstrap_servers
    assert topology.broker.sasl is not None and topology.broker.security_protocol.startswith("SASL_")
    # One port: the endpoint, the probes, the Service, the scrape annotation, the image.
    port = topology.operations.metrics_port
    assert topology.operations.bind == "0.0.0.0"
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port and dockerfile()["EXPOSE"] == [str(port)]
    name = container_port["name"]
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": name}
    assert probes["startupProbe"] == {"path": "/healthz", "port": name}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": name}
    assert service["spec"]["ports"] == [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    # Stops inside the grace period; resources; the image's numeric user; selectors agree.
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain_bound_s(topology)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert dockerfile()["USER"] == [str(pod["spec"]["securityContext"]["runAsUser"])]
    labels = pod["metadata"]["labels"]
    selectors = [deployment["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"]]
    for selector in [*selectors, service["spec"]["selector"]]:
        assert selector.items() <= labels.items()
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    # KEDA scales this Deployment on this group's lag of the input topic, up to its partitions.
    spec = scaled["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert spec["scaleTargetRef"] == target
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == env["PIPELINE_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == topology.source.group_id
    assert [meta["topic"]] == topology.source.topics
    assert meta["offsetResetPolicy"] == topology.source.auto_offset_reset
    assert meta["sasl"] == SASL_MODES[topology.broker.sasl.mechanism]
    assert (meta["tls"] == "enable") == (topology.broker.security_protocol in {"SSL", "SASL_SSL"})
    partitions = int(scaled["metadata"]["annotations"]["recommendation-pipeline/input-partitions"])
    assert spec["maxReplicaCount"] == partitions == topics_created()[meta["topic"]]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    for parameter, field in (("username", "username"), ("password", "password")):
        assert refs[parameter]["name"] == secret["metadata"]["name"]
        assert f"{field}: ${{{refs[parameter]['key']}}}" in text, parameter
    # The kustomization lists every manifest here but the secret template, and the image.
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = {*kustomization["resources"], path.name, "kustomization.yaml", "secret.example.yaml"}
    assert {p.name for p in K8S.glob("*.yaml")} == listed
    (image,) = kustomization["images"]
    assert container["image"].split(":")[0] == image["name"]


def test_kustomize_renders_valid_objects() -> None:
    """`kubectl kustomize` (on the machine image) renders the directory; the rendered core
    objects validate and name the generated ConfigMap."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (on this machine's image) renders the kustomization: install it"
    kv = require_module("kubernetes_validate")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = {d["kind"]: d for d in yaml.safe_load_all(done.stdout) if d}
    assert set(rendered) == {*k8s_objects(), "ConfigMap"}
    for obj in rendered.values():
        if not obj["apiVersion"].startswith("keda.sh/"):
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
    configmap = rendered["ConfigMap"]["metadata"]["name"]
    assert configmap.startswith("pipeline-topology-")
    volumes = rendered["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "topology", "configMap": {"name": configmap}} in volumes
    assert rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "recommendation-pipeline:0.1.0"
    )
