"""`sysmon <command> --help` shows types and defaults as users type them."""

from __future__ import annotations

import pytest

from sysmon.cli import main


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_aggregator_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "aggregator")
    assert "--token TOKEN" in text
    assert "--tls-cert PATH" in text
    assert "--raw-retention DURATION" in text
    assert "keep raw samples this long (default: 24h)" in text
    assert "(default: 5m)" in text  # --hot-window
    assert "(default: 50ms)" in text  # --commit-linger
    for machine_words in ("SecretStr", "timedelta", "{Path,null}", "dict[str", "list[str]", "0:05:00", "1 day"):
        assert machine_words not in text


def test_agent_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "agent")
    assert "--labels KEY=VALUE,..." in text
    assert "--metric-groups TEXT,..." in text
    assert "(default: 5s)" in text
    assert "default factory" not in text
