"""An AlertRule on a series that came over Prometheus remote write fires as on a collector's: the
remote-written batch goes through the same bus to the alerts service."""

from __future__ import annotations

import time

import httpx

from tests.helpers import wait_for
from tests.integration.test_alerts import Receiver, Rules, rule_spec, start_alerts  # noqa: F401 (fixture)
from tests.integration.test_alerts import receiver as receiver
from tests.remote_write_helpers import HEADERS, write_request


async def test_a_remote_written_series_fires_a_rule(start_aggregator, start_alerts, receiver: Receiver) -> None:  # noqa: F811
    agg = await start_aggregator(http_listen="127.0.0.1:0")
    api = Rules(agg)
    try:
        alerts = await start_alerts(agg)
        await api.apply("hot-room", rule_spec(receiver.url, metric="room_temperature_celsius", match={"room": "a"},
                                              condition={"op": ">", "threshold": 30},
                                              annotations={"summary": "{{ host }} is at {{ value }}"}))
        await wait_for(lambda: "hot-room" in alerts.service.state.rules, message="rule loaded")
        async with httpx.AsyncClient(base_url=agg.http.url, timeout=30) as client:
            now = int(time.time() * 1000)
            body = write_request([({"__name__": "room_temperature_celsius", "instance": "sensor-7:9100", "room": "a"},
                                   [(now, 35.0)])])
            assert (await client.post("/api/v1/write", content=body, headers=HEADERS)).status_code == 204
        await wait_for(lambda: receiver.statuses() == ["firing"], message="the rule firing")
        (alert,) = receiver.alerts()
        assert alert["labels"]["host"] == "sensor-7"
        assert alert["annotations"]["summary"] == "sensor-7 is at 35.0"
    finally:
        await api.channel.close()
