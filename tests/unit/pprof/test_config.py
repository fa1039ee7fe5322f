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
    ({"profiles": {"cpu": {"interval": 10, "seconds": 10}}}, "at least 0.5s shorter"),
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
