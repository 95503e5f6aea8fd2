"""deploy/grafana/dashboard.json against the real thing: the service on loopback takes traffic on both
decoders, a real Prometheus scrapes it with deploy/prometheus's config and alert rules, and every panel's
PromQL (template variables substituted as Grafana would) must return data; so must the template variables'
queries and the prometheus-adapter rule, and every alert rule must evaluate cleanly."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest
from deploy_support import DEPLOY, exported_series, load_yaml, metric_names

from dgr2.service.settings import Settings

pytestmark = pytest.mark.timeout(180)  # every wait inside is bounded well below this

DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
RATE_WINDOW = "1m"
# panels where one decoder may rightly have no series: the constrained AR decoder writes no invalid answer,
# and refusals before a decoder was chosen carry decoder="none"
EITHER_DECODER = {"Raw faults and repairs / s", "Rejections / s by reason"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in dashboard()["panels"] for t in p["targets"]]


def variables() -> dict[str, dict]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def substitute(expr: str, model: str) -> str:
    """What Grafana sends: a single value as is, a multi-value 'All' as a regex alternation."""
    return (expr.replace("$__rate_interval", RATE_WINDOW).replace("$model", model)
            .replace("$decoder", "(ar|diffusion)"))


# ---------------------------------------------------------------------------------------------- static
def test_panels_cover_the_issue_and_read_exported_series():
    titles = {p["title"] for p in dashboard()["panels"]}
    for needed in ("Generated tokens / s", "Requests / s by decoder and status", "Request latency",
                   "Tokens per forward pass", "Batch size", "Queue depth", "Raw validity",
                   "Raw faults and repairs / s", "Rejections / s by reason", "Shadow agreement"):
        assert needed in titles
    exported = exported_series()
    for title, t in targets():
        assert metric_names(t["expr"]) and metric_names(t["expr"]) <= exported, (title, t["expr"])
        assert t["datasource"]["uid"] == "${datasource}"
        assert "$model" in t["expr"] and "$decoder" in t["expr"], (title, t["expr"])


def test_template_variables_for_model_and_decoder():
    v = variables()
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    assert v["model"]["query"]["query"] == "label_values(dgr2_model_info, model)"
    assert v["decoder"]["multi"] and v["decoder"]["includeAll"]
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_provisions_the_dashboard_and_prometheus():
    compose = load_yaml(DEPLOY / "compose.yaml")["services"]
    mounts = {m.split(":")[0]: m.split(":")[1] for s in compose.values() for m in s.get("volumes", [])}
    assert mounts["./grafana/dashboard.json"].startswith("/var/lib/grafana/dashboards/")
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    for local in (m for m in mounts if m.startswith("./")):
        assert (DEPLOY / local).exists(), local
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dgr2.yaml")["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    (ds,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and "prometheus" in compose
    known = {"DGR2_" + name.upper() for name in Settings.model_fields}
    assert set(compose["dgr2"]["environment"]) <= known


# ---------------------------------------------------------------------------------------------- live
@pytest.fixture()
def prometheus(launch_prometheus, need):
    """start(target) -> base url: a real Prometheus on deploy/prometheus/prometheus.yml, aimed at ``target``,
    scraping and evaluating the alert rules every second."""
    binary = need.binary("prometheus", "bash scripts/install_prometheus.sh (the Debian package prometheus)")

    def start(target: str) -> str:
        config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        return launch_prometheus(binary, config)

    return start


def api(base: str, path: str, **params) -> list | dict:
    r = httpx.get(f"{base}/api/v1/{path}", params=params, timeout=5)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> list[tuple[dict, float]]:
    """Instant query -> [(labels, value)] with the finite values only."""
    data = api(base, "query", query=promql)
    assert data["resultType"] == "vector", data
    return [(s["metric"], float(s["value"][1])) for s in data["result"] if math.isfinite(float(s["value"][1]))]


def poll(what: str, check, timeout: float = 60.0):
    """Retry ``check`` (returns a falsy value or raises AssertionError until satisfied) for ``timeout`` s."""
    deadline, errors = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, httpx.HTTPError) as e:
            errors.append(str(e))
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; first and last errors: {errors[:1] + errors[-1:]}")


def send_traffic(srv, h) -> None:
    """Three rounds a scrape apart, so rates see increases: each decoder explicitly, the A/B split by
    user id, a 422 (refused before a decoder is chosen) and a 413 (refused by a chosen decoder)."""
    with srv.client() as c:
        for round_ in range(3):
            for decoder in ("ar", "diffusion"):
                for n in (4, 8):
                    r = c.post("/v1/rerank", json=h.rerank_body(candidates=h.CANDIDATES[:n], decoder=decoder))
                    assert r.status_code == 200, r.text
            for user in range(4):
                r = c.post("/v1/rerank", json=h.rerank_body(user_id=f"u{round_}-{user}"))
                assert r.status_code == 200, r.text
            assert c.post("/v1/rerank", json={"candidates": []}).status_code == 422
            too_many = [f"X{i}" for i in range(srv.rt.settings.max_candidates + 1)]
            assert c.post("/v1/rerank", json={"candidates": too_many, "decoder": "ar"}).status_code == 413
            time.sleep(1.5)


@pytest.mark.slow
def test_every_panel_returns_data_from_a_real_prometheus(shared_store, h, prometheus):
    settings = h.settings_for(shared_store, shadow_rate=1.0, max_candidates=20)
    with h.running(settings) as srv:
        base = prometheus(srv.url.removeprefix("http://"))
        poll("Prometheus to scrape the service", lambda: query(base, 'up{job="dgr2"} == 1'))
        send_traffic(srv, h)
        # shadow decodes run after the responses: wait until both decoders recorded agreement
        poll("shadow agreement from both decoders", lambda: {m["decoder"] for m, _ in query(
            base, "sum by (decoder) (dgr2_shadow_agreement_count)")} == {"ar", "diffusion"})

        def all_panels() -> dict[str, list]:
            found = {}
            for title, t in targets():
                series = query(base, substitute(t["expr"], h.MODEL))
                assert series, f"panel {title!r} ({t['refId']}) returned no data: {t['expr']}"
                decoders = {m.get("decoder") for m, _ in series}  # every panel is per decoder
                assert decoders == {"ar", "diffusion"} or title in EITHER_DECODER, (title, t["refId"], series)
                found[f"{title} {t['refId']}"] = series
            return found

        found = poll("every panel to return data", all_panels)
        assert any(v > 0 for _, v in found["Generated tokens / s A"])
        assert {m["reason"] for m, _ in found["Rejections / s by reason A"]} >= {"invalid", "too_large"}

        # the template variables' label_values() queries find this model and both decoders
        for name, want in (("model", {h.MODEL}), ("decoder", {"ar", "diffusion"})):
            selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variables()[name]["query"]["query"]).groups()
            values = set(api(base, f"label/{label}/values", **{"match[]": substitute(selector, h.MODEL)}))
            assert want <= values, (name, values)

        # the prometheus-adapter rule's query, as the adapter fills it in for the HPA (one series per pod)
        (rule,) = load_yaml(DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
        adapter = (rule["metricsQuery"].replace("<<.Series>>", "dgr2_queue_depth")
                   .replace("<<.LabelMatchers>>", 'job="dgr2"').replace("<<.GroupBy>>", "instance"))
        assert query(base, adapter)

        # every alert rule loaded and evaluates without error on live series
        def rules_evaluated() -> list[dict]:
            rules = [r for g in api(base, "rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r["lastEvaluation"] > "2000" for r in rules) else []

        rules = poll("alert rules to be evaluated", rules_evaluated)
        alerts = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"][0]["rules"]
        assert {r["name"] for r in rules} == {a["alert"] for a in alerts}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
