"""deploy/grafana: the data source points Grafana's Prometheus type at the gateway's /prometheus, and
every query of the host dashboard answers with data from a real collector through the Prometheus API."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.gateway_helpers import running_gateway
from tests.helpers import running_collector, wait_for

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def _dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "sysmon-host.json").read_text())


def test_provisioning_names_the_dashboards_data_source() -> None:
    (ds,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "sysmon.yaml").read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"].endswith("/prometheus")
    assert "SYSMON_TOKEN" not in json.dumps(ds["jsonData"])  # the token only in secureJsonData
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sysmon.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    dash = _dashboard()
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {v["datasource"]["uid"]
                                                              for v in dash["templating"]["list"]}
    assert uids == {ds["uid"]}


async def test_every_panel_query_answers(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator()
    dash = _dashboard()
    exprs = [t["expr"].replace("$host", "graf-host") for p in dash["panels"] for t in p["targets"]]
    async with running_collector(agg.address, host_id="graf-host", interval="200ms"), \
            running_gateway(pg_dsn, redis_url) as gw:
        # The host variable: Grafana asks the label's values for the metric.
        async def hosts() -> list[str]:
            r = await gw.http.get("/prometheus/api/v1/label/host/values",
                                  params={"match[]": "system_cpu_utilization_ratio"})
            return r.json()["data"]

        assert await wait_for(hosts, message="graf-host listed") == ["graf-host"]

        async def empty() -> list[str]:
            missing = []
            for e in exprs:
                r = await gw.http.post("/prometheus/api/v1/query", data={"query": e})
                assert r.status_code == 200, (e, r.text)
                if not r.json()["data"]["result"]:
                    missing.append(e)
            return missing

        # Rates need two readings of the collector's counters: wait for every panel to have data.
        await wait_for(lambda: _none(empty), within=30, interval=0.5, message="data in every panel")
        r = await gw.http.post("/prometheus/api/v1/query_range", data={
            "query": exprs[4], "start": "now", "end": "now", "step": "15s"})
        assert r.json()["status"] == "error"  # "now" is not a Prometheus time: told, not a 500
        assert r.status_code == 400


async def _none(check) -> bool:
    return not await check()
