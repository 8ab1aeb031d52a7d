"""The operator's settings beyond sysmon.core.settings.OperatorSettings: its own identity.

The aggregators of the fleets it deploys take the operator's projected ServiceAccount token as
admin (ConfigService.Apply of AlertRules), so the operator names its ServiceAccount to them:
SYSMON_SERVICE_ACCOUNT, which its Deployment sets from the downward API (spec.serviceAccountName),
in the namespace it serves.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sysmon.operator.fleet_spec import DNS_1123_SUBDOMAIN_RE

DEFAULT_SERVICE_ACCOUNT = "sysmon-operator"


class OperatorIdentity(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYSMON_", extra="ignore", populate_by_name=True)

    service_account: str = Field(
        DEFAULT_SERVICE_ACCOUNT, max_length=253, pattern=DNS_1123_SUBDOMAIN_RE,
        description="the operator's own ServiceAccount, in the namespace it serves: each fleet's aggregator "
                    "accepts its token as admin",
    )

    def principal(self, namespace: str) -> str:
        """namespace/name, as the aggregator's SYSMON_KUBE_ADMINS lists it."""
        return f"{namespace}/{self.service_account}"
