"""Typed settings shared by every service: one place where each field names its
flag, its env var and its default (envoyproxy/ratelimit's settings module, in
pydantic-settings).

Every field is both a command-line flag (`--metrics-listen`) and an environment
variable (`<PREFIX>METRICS_LISTEN`); flags win over env vars, env vars over
defaults. `--help` lists every flag with its env var and default, because the
env var is appended to each field's description when the class is defined.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, NoReturn, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict, SettingsError

from services.common.errors import ConfigError

T = TypeVar("T", bound="ServiceSettings")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the services' small commands (and the client): a bad flag is one
    line, `<prog>: error: <message>`, status 2, as for the services' own flags; the
    usage block is what `--help` is for."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:port"); raises ConfigError with the bad value."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has; each service subclasses this with its own
    `env_prefix`, defaults and domain fields."""

    model_config = SettingsConfigDict(
        env_prefix="SAFEGUARDS_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        extra="ignore",
    )

    #: Service name used in logs, metrics and the "<service> listening on" line.
    service_name: ClassVar[str] = "service"

    listen: str = Field("127.0.0.1:0", description="gRPC listen address HOST:PORT (port 0 picks a free port)")
    metrics_listen: str = Field(
        "",
        description="Prometheus /metrics HTTP listen address HOST:PORT; empty disables metrics over HTTP",
    )
    health_listen: str = Field(
        "",
        description="HOST:PORT of a second listener that serves only grpc.health.v1, without TLS (the main "
        "port's statuses, NOT_SERVING while draining), for Kubernetes' native gRPC probes when the main port "
        "requires mutual TLS; empty: off",
    )
    region: str = Field("local", description="data-residency region this process serves (labels logs and metrics)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level: DEBUG, INFO, WARNING, ERROR"
    )
    log_decisions_per_s: float = Field(
        100.0,
        ge=0,
        description="most INFO lines per second written by each high-rate logger (one line per decision); "
        "the rest are counted in safeguards_log_records_dropped_total, not written; 0 = no cap",
    )
    plaintext: bool = Field(
        False,
        description="serve without TLS; must be chosen explicitly (local runs on loopback only)",
    )
    tls_cert_file: str = Field("", description="PEM server certificate chain (enables TLS)")
    tls_key_file: str = Field("", description="PEM private key of --tls-cert-file")
    tls_client_ca_file: str = Field(
        "",
        description="PEM CA bundle that client certificates must chain to; set to require mutual TLS",
    )
    allowed_client_sans: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="with mutual TLS: only callers whose certificate has one of these SANs are served "
        "(JSON list or comma separated; empty allows every verified client)",
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest gRPC message accepted or sent")
    max_concurrent_rpcs: int = Field(
        2000, ge=1, description="in-flight RPCs beyond this are rejected with RESOURCE_EXHAUSTED"
    )
    shutdown_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM, time to keep serving after health turns NOT_SERVING (lets load balancers drain)",
    )
    drain_grace_seconds: float = Field(
        10.0, ge=0, description="on SIGTERM, how long in-flight RPCs may run before they are cancelled"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", description="asyncio event loop: uvloop or asyncio")
    otlp_endpoint: str = Field(
        "",
        description="OpenTelemetry collector (OTLP/gRPC, e.g. http://otel-collector:4317) to export traces to; "
        "empty: no tracing (nothing instrumented)",
    )
    otlp_insecure: bool = Field(False, description="send traces to --otlp-endpoint without TLS")
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of new traces sampled (a caller's sampling decision is followed)"
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _annotate_env_vars(cls)

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: Any) -> Any:
        # Accept "a,b" for list fields as well as JSON, as operators type both.
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, str) and _is_list(info.annotation):
                    text = value.strip()
                    if text.startswith("["):
                        try:
                            data[name] = json.loads(text)
                        except json.JSONDecodeError as exc:
                            flag = "--" + name.replace("_", "-")
                            raise ValueError(f"argument {flag}: not a JSON list ({exc.msg}); or give a,b,c") from None
                    else:
                        data[name] = [v.strip() for v in text.split(",") if v.strip()]
        return data

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_transport(self) -> ServiceSettings:
        split_host_port(self.listen)
        if self.metrics_listen:
            split_host_port(self.metrics_listen)
        if self.health_listen:
            health_port = split_host_port(self.health_listen)[1]
            for flag, other in (("--listen", self.listen), ("--metrics-listen", self.metrics_listen)):
                if other and health_port and health_port == split_host_port(other)[1]:
                    raise ValueError(f"--health-listen {self.health_listen} uses the port of {flag} {other}")
        if not self.plaintext and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError(
                "no transport security chosen: give --tls-cert-file and --tls-key-file, "
                "or pass --plaintext explicitly (local loopback runs only)"
            )
        if self.plaintext and (self.tls_cert_file or self.tls_client_ca_file):
            raise ValueError("--plaintext conflicts with --tls-cert-file/--tls-client-ca-file")
        if self.allowed_client_sans and not self.tls_client_ca_file:
            raise ValueError("--allowed-client-sans needs mutual TLS (--tls-client-ca-file)")
        return self

    @property
    def env_prefix(self) -> str:
        return str(self.model_config.get("env_prefix", ""))

    @classmethod
    def parse(cls: type[T], argv: Sequence[str] | None = None) -> T:
        """Parse flags (and env vars). `--help` prints and exits 0; a bad flag or value
        exits 2 with one argparse-style line (`<prog>: error: ...`), never a traceback."""
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            return CliApp.run(cls, cli_args=args, cli_exit_on_error=False)
        except SettingsError as exc:
            cls.exit_with_error(str(exc).removeprefix("error parsing CLI: "))
        except ValidationError as exc:
            cls.exit_with_error(describe_errors(exc))

    @classmethod
    def prog(cls) -> str:
        return str(cls.model_config.get("cli_prog_name") or f"python -m services.{cls.service_name}")

    @classmethod
    def error_line(cls, message: str) -> str:
        """argparse's error format, on one line: `<prog>: error: <message>`."""
        return f"{cls.prog()}: error: {' '.join(message.split())}"

    @classmethod
    def exit_with_error(cls, message: str) -> NoReturn:
        """Exit like argparse's `error()`, minus the usage block: one line, status 2."""
        print(cls.error_line(message), file=sys.stderr)
        raise SystemExit(2)

    def cli_cmd(self) -> None:  # CliApp.run calls this; services run their own main.
        return None


def describe_errors(exc: ValidationError) -> str:
    """A settings ValidationError as one line naming each bad flag, its value and why."""
    parts = []
    for err in exc.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"]:
            flag = "--" + str(err["loc"][0]).replace("_", "-")
            parts.append(f"argument {flag}: {msg} (got {err['input']!r})")
        else:
            parts.append(msg)
    return "; ".join(parts)


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def _annotate_env_vars(cls: type[BaseSettings]) -> None:
    """Append "[env: PREFIX_NAME]" to every field's help so --help is complete."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    prog = cls.model_config.get("cli_prog_name")
    for name, info in cls.model_fields.items():
        env = f"{prefix}{name.upper()}"
        base = (info.description or "").split(" [env: ")[0]
        info.description = f"{base} [env: {env}]"
    if prog is None:
        cls.model_config["cli_prog_name"] = f"python -m services.{cls.service_name}"
