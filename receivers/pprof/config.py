"""Configuration of the ``pprof`` receiver (docs/profiling.md lists every key with its default)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from pydantic import Field, field_validator, model_validator

from gotel.component.contract import ComponentConfig, RenamedKey
from gotel.config.types import Duration, format_duration
from gotel.discovery import DiscoveryConfig as ProcessSelection


class ProfileConfig(ComponentConfig):
    enabled: bool = True
    interval: Duration = Field(15.0, ge=1.0, description="time between two scrapes of this profile")
    path: str | None = Field(None, description="path relative to path_prefix, e.g. 'allocs' (default: the type's own)")


class CPUConfig(ProfileConfig):
    renamed_keys = MappingProxyType({"seconds": RenamedKey("duration", "s")})
    duration: Duration | None = Field(
        None, gt=0, description="CPU profile length (?seconds=); default interval - 1s (a scrape never overlaps the next)")

    @model_validator(mode="after")
    def _fits(self) -> CPUConfig:
        if self.duration is not None and self.duration > self.interval - 0.5:
            raise ValueError(f"cpu.duration ({format_duration(self.duration)}) must be at least 500ms shorter than "
                             f"cpu.interval ({format_duration(self.interval)})")
        return self

    def profile_seconds(self) -> int:
        s = self.duration if self.duration is not None else self.interval - 1.0
        return max(1, int(s))


class DumpConfig(ProfileConfig):
    interval: Duration = Field(60.0, ge=1.0)
    max_goroutines: int = Field(
        10000, ge=0, description="skip a debug=2 dump (it stops the world) when the target has more goroutines")


class LeakProfileConfig(ProfileConfig):
    interval: Duration = Field(60.0, ge=1.0)


def _off() -> ProfileConfig:
    return ProfileConfig(enabled=False)


class ProfilesConfig(ComponentConfig):
    cpu: CPUConfig = Field(default_factory=CPUConfig)
    heap: ProfileConfig = Field(default_factory=ProfileConfig)
    allocs: ProfileConfig = Field(default_factory=_off)
    memstats: ProfileConfig = Field(
        default_factory=_off,
        description="runtime.MemStats from the heap?debug=1 trailer as go.gc.* metrics (the diagnosis connector's gc rule)")
    mutex: ProfileConfig = Field(default_factory=ProfileConfig)
    block: ProfileConfig = Field(default_factory=ProfileConfig)
    goroutine: ProfileConfig = Field(default_factory=ProfileConfig)
    goroutine_dump: DumpConfig = Field(default_factory=DumpConfig)
    goroutineleak: LeakProfileConfig = Field(default_factory=LeakProfileConfig)
    delta_heap: ProfileConfig = Field(default_factory=_off)
    delta_mutex: ProfileConfig = Field(default_factory=_off)
    delta_block: ProfileConfig = Field(default_factory=_off)


class StaticTarget(ComponentConfig):
    endpoint: str = Field(description="http://host:port of the program's pprof server")
    service_name: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    netns: str | None = Field(None, description="network namespace file to connect from (/var/run/netns/NAME)")
    netns_pid: int | None = Field(None, description="connect from this process's network namespace")
    path_prefix: str = "/debug/pprof"

    @model_validator(mode="after")
    def _check(self) -> StaticTarget:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must start with http:// or https://")
        if self.netns and self.netns_pid:
            raise ValueError("set netns or netns_pid, not both")
        return self


class DiscoveryConfig(ProcessSelection):
    """Local Go processes serving pprof; the selectors are gotel.discovery's (pids, exe_paths, cmdline,
    ports, container_ids, go_only, exclude). ``ports`` also limits which listening ports are probed."""

    enabled: bool | None = Field(None, description="default: on when no targets are listed")
    refresh_interval: Duration = Field(30.0, ge=1.0)
    path_prefix: str = "/debug/pprof"


class DiagnosticsConfig(ComponentConfig):
    renamed_keys = MappingProxyType({"blocked_minutes": RenamedKey("blocked_threshold", "m")})
    leak_scrapes: int = Field(3, ge=1, description="K: a bucket growing over K consecutive dumps is a finding")
    leak_min_goroutines: int = Field(5, ge=1, description="ignore growing buckets smaller than this")
    blocked_threshold: Duration = Field(
        1800.0, ge=0, description="report goroutines blocked on chan/lock/sync this long (0: off; Go counts whole minutes)")
    max_buckets: int = Field(2000, ge=10, description="goroutine buckets remembered per target")
    contention_top: int = Field(5, ge=0, description="lock sites reported per mutex/block scrape")
    alloc_top: int = Field(
        5, ge=0, description="allocation sites per allocs delta, or heap delta when allocs is off (gotel.memory.allocated.site)")
    goroutine_groups: int = Field(
        50, ge=0, description="largest waiting and in-syscall goroutine groups reported per dump (gotel.goroutine.group.count)")
    contention_min_rate: float = Field(
        0.01, ge=0, description="report a lock site as a log record from this many seconds of waiting per second")


def check_kubernetes(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validated with gotel.k8s.discovery's own model (imported only when the block is used)."""
    if v is None:
        return v
    try:
        from gotel.k8s.discovery import KubernetesDiscoveryConfig
    except ImportError:
        raise ValueError("kubernetes pod discovery (gotel.k8s.discovery) is not installed") from None
    KubernetesDiscoveryConfig.model_validate(v)
    return v


class Config(ComponentConfig):
    targets: list[StaticTarget] = Field(default_factory=list)
    kubernetes: dict[str, Any] | None = Field(
        None, description="pod discovery by annotations (profiles.grafana.com/*, pyroscope.io/*): see docs/kubernetes.md")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    timeout: Duration = Field(10.0, gt=0, description="per request; CPU scrapes get seconds + timeout")
    max_body_bytes: int = Field(64 << 20, ge=1024)
    max_stacks: int = Field(20000, ge=100, description="distinct stacks kept per target and profile for deltas")
    original_payload: bool = Field(False, description="attach the pprof bytes to the OTLP profile")
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    jitter: bool = Field(True, description="spread first scrapes over the interval (hash of target and type)")

    @field_validator("kubernetes")
    @classmethod
    def _k8s(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_kubernetes(v)

    def discovery_on(self) -> bool:
        if self.discovery.enabled is not None:
            return self.discovery.enabled
        return not self.targets and self.kubernetes is None
