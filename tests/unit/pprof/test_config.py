from __future__ import annotations

import pytest
from pydantic import ValidationError

from gotel.receivers.pprof import factory


def test_defaults_and_derived_cpu_seconds() -> None:
    c = factory.config.model_validate({"targets": [{"endpoint": "http://127.0.0.1:6060"}],
                                       "profiles": {"cpu": {"interval": "1m"}}})
    assert c.profiles.cpu.profile_seconds() == 59
    assert not c.discovery_on()  # static targets listed: discovery off unless asked
    assert factory.config().discovery_on()  # nothing listed: discover local Go processes


@pytest.mark.parametrize("cfg,needle", [
    ({"targets": [{"endpoint": "127.0.0.1:6060"}]}, "must start with http"),
    ({"profiles": {"cpu": {"interval": 10, "duration": 10}}}, "cpu.duration (10s) must be at least 500ms shorter"),
    ({"profiles": {"cpu": {"interval": "10s", "seconds": 10}}}, "cpu.duration (10s) must be at least 500ms shorter"),
    ({"profiles": {"heap": {"intervall": 10}}}, "intervall"),
    ({"profiles": {"heapp": {}}}, "heapp"),
    ({"targets": [{"endpoint": "http://x:1", "netns": "/var/run/netns/a", "netns_pid": 3}]}, "not both"),
    ({"discovery": {"cmdline": "("}}, "invalid regular expression"),
    ({"timeout": "ten seconds"}, "invalid duration"),
])
def test_config_errors_name_the_problem(cfg: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as e:
        factory.config.model_validate(cfg)
    assert needle in str(e.value)


def test_target_profile_selection_from_discovery() -> None:
    from gotel.receiverhelper.targets import Target
    from gotel.receivers.pprof.receiver import PprofReceiver, TargetRunner
    from tests.helpers.pprofkit import context, sinks

    cfg = factory.config.model_validate({"targets": [{"endpoint": "http://127.0.0.1:1"}]})
    rcv = PprofReceiver(cfg, sinks(), context("pprof"))  # type: ignore[arg-type]
    t = Target(url="http://10.0.0.1:6060", source="kubernetes", path_prefix="/debug/pprof",
               profile_paths={"memory": "/debug/pprof/allocs", "cpu": "/debug/pprof/profile"})
    r = TargetRunner(rcv, t)
    heap = r._selected("heap", cfg.profiles.heap)
    assert heap is not None and heap.path == "allocs" and heap.interval == cfg.profiles.heap.interval
    assert r._selected("cpu", cfg.profiles.cpu) is not None
    assert r._selected("mutex", cfg.profiles.mutex) is None  # not annotated
    assert r._selected("goroutine_dump", cfg.profiles.goroutine_dump) is None
    plain = TargetRunner(rcv, Target(url="http://10.0.0.1:6060"))
    assert plain._selected("mutex", cfg.profiles.mutex) is cfg.profiles.mutex
