"""Client-side settings shared by network exporters, named as in the collector (confighttp/configtls).

Header values are kept as pydantic SecretStr so that printing a config, or an error about it, never
shows a token.
"""

from __future__ import annotations

import ssl
from typing import Literal

from pydantic import Field, SecretStr

from gotel.component import ComponentConfig
from gotel.config.types import Duration
from gotel.exporterhelper import QueueConfig, RetryConfig


class TLSClientConfig(ComponentConfig):
    insecure: bool = Field(False, description="plain text (no TLS) for http:// or gRPC endpoints")
    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name_override: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class BasicAuth(ComponentConfig):
    username: str
    password: SecretStr


class ClientConfig(ComponentConfig):
    """The common part of every push exporter's config."""

    endpoint: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    tls: TLSClientConfig = Field(default_factory=TLSClientConfig)
    compression: Literal["gzip", "none", ""] = "gzip"
    timeout: Duration = Field(5.0, gt=0, description="one send attempt: 5s, 500ms or seconds as a number")
    sending_queue: QueueConfig = Field(default_factory=QueueConfig)
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig)

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}
