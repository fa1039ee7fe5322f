"""Malformed pprof and OTLP profiles: a refusal or a counted drop naming the field, never IndexError.

fuzz_corpus/ holds the inputs that broke profconv before it checked its indices (eight places:
mapping filename and build id, period type, the location and attribute tables, a time beyond
int64, the string table in otlp_totals); each is replayed here. A seeded fuzz run looks for more.
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from gotel.formats import pprof, profconv
from tests.unit.pprof import fuzzprof

CASES = sorted(fuzzprof.CORPUS.glob("*.pb"))


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 8
    assert {c.name.split("-")[0] for c in CASES} == {"pprof", "otlp"}


@pytest.mark.parametrize("path", CASES, ids=[c.name for c in CASES])
def test_corpus_input_is_refused_or_dropped_with_the_field_named(path: fuzzprof.Path) -> None:
    data = path.read_bytes()
    if path.name.startswith("pprof-"):
        fuzzprof.check_pprof(data)
        with pytest.raises(pprof.PprofError) as ei:
            pprof.decode(data)
        assert "[" in str(ei.value) or "." in str(ei.value) or "unknown" in str(ei.value), str(ei.value)
    else:
        fuzzprof.check_otlp(data)
        req = ExportProfilesServiceRequest.FromString(data)
        drops: list[tuple[int, str]] = []
        try:
            profconv.otlp_to_pprof(req, on_drop=lambda n, why: drops.append((n, why)))
            profconv.otlp_totals(req)
        except profconv.MalformedProfile as e:  # otlp_totals has no drop callback: it refuses
            drops.append((0, str(e)))
        assert drops, "each corpus input is malformed somewhere"
        assert all(("_table" in why or "_nano" in why) for _n, why in drops), drops


def test_a_bad_profile_is_dropped_and_the_good_one_beside_it_kept() -> None:
    req = fuzzprof.seed_otlp()
    good = len(req.resource_profiles[0].scope_profiles[0].profiles)
    rp = req.resource_profiles.add()
    bad = rp.scope_profiles.add().profiles.add()
    bad.CopyFrom(req.resource_profiles[0].scope_profiles[0].profiles[0])
    bad.time_unix_nano += 1  # its own group
    bad.samples[0].stack_index = 999
    drops: list[tuple[int, str]] = []
    groups = profconv.otlp_to_pprof(req, on_drop=lambda n, why: drops.append((n, why)))
    assert len(groups) == 1 and len(groups[0].sample_types) == good
    assert drops == [(1, "resource_profiles[1].scope_profiles[0].profiles[0].samples[0].stack_index 999: "
                         f"stack_table has {len(req.dictionary.stack_table)} entries")]
    with pytest.raises(profconv.MalformedProfile, match="stack_index 999"):
        profconv.otlp_to_pprof(req)


def test_seeded_fuzz_finds_nothing() -> None:
    broken = fuzzprof.run(1500, seed=20261206)
    assert broken == [], [(k, w) for k, w, _d in broken]
