"""pprof decoding/validation and the pprof <-> OTLP profiles conversion."""

from __future__ import annotations

import gzip

import pytest

from gotel.formats import pprof, profconv
from tests.helpers.pprofkit import HEAP_TYPES, make_profile


def heap() -> pprof.Profile:
    return make_profile(HEAP_TYPES, [
        (["main.allocRetained", "main.handler", "main.main"], [3, 3 << 20, 1, 1 << 20]),
        (["bytes.growSlice", "main.handler", "main.main"], [7, 4096, 0, 0]),
        (["main.allocRetained", "main.other"], [1, 100, 1, 100]),
    ], labels=[{"handler": "/alloc"}], period=("space", "bytes", 512 * 1024))


def test_decode_gzip_and_raw_roundtrip() -> None:
    p = heap()
    for data in (pprof.encode(p), pprof.encode(p, compress=False)):
        q = pprof.decode(data)
        assert pprof.totals(q) == pprof.totals(p)
        assert pprof.sample_type_names(q) == HEAP_TYPES


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (gzip.compress(b"x" * 10)[:-6], "truncated gzip"),
    (b"\x1f\x8b\x08\x00garbage", "gzip"),
    (b"<html><body>login</body></html>", "not a pprof"),
    (pprof.encode(make_profile([], [])), "no sample_type"),
])
def test_decode_rejects_with_reason(data: bytes, needle: str) -> None:
    with pytest.raises(pprof.PprofError) as e:
        pprof.decode(data)
    assert needle in str(e.value)


def test_truncated_profile_is_rejected() -> None:
    data = pprof.encode(heap())
    with pytest.raises(pprof.PprofError, match="truncated gzip"):
        pprof.decode(data[: len(data) // 2])


def test_gzip_bomb_capped() -> None:
    with pytest.raises(pprof.PprofError, match="inflates to more than"):
        pprof.decode(gzip.compress(b"\0" * (1 << 20)), max_bytes=1000)


def test_otlp_one_profile_per_sample_type_with_shared_dictionary() -> None:
    p = heap()
    req = profconv.pprof_to_otlp(p, {"service.name": "svc"}, profile_attributes={"gotel.pprof.type": "heap"})
    profs = req.resource_profiles[0].scope_profiles[0].profiles
    d = req.dictionary
    assert [d.string_table[x.sample_type.type_strindex] for x in profs] == [t for t, _u in HEAP_TYPES]
    # index 0 of every table is the zero value
    assert d.string_table[0] == ""
    for table in (d.mapping_table, d.location_table, d.function_table, d.link_table, d.attribute_table, d.stack_table):
        assert table[0].ByteSize() == 0
    # totals equal the source's, per sample type
    assert profconv.otlp_totals(req) == dict(zip([t for t, _u in HEAP_TYPES], pprof.totals(p), strict=True))
    # stacks are shared between the four profiles, not copied
    assert len(d.stack_table) == 1 + 3
    assert d.string_table[profs[0].period_type.type_strindex] == "space"
    assert profs[0].period == 512 * 1024


def test_labels_become_sample_attributes() -> None:
    req = profconv.pprof_to_otlp(heap(), {"service.name": "svc"})
    d = req.dictionary
    smp = req.resource_profiles[0].scope_profiles[0].profiles[0].samples[0]
    a = d.attribute_table[smp.attribute_indices[0]]
    assert (d.string_table[a.key_strindex], a.value.string_value) == ("handler", "/alloc")


def test_backward_conversion_restores_columns_and_labels() -> None:
    p = heap()
    req = profconv.pprof_to_otlp(p, {"service.name": "svc"}, profile_attributes={"gotel.pprof.type": "heap",
                                                                                 "gotel.pprof.delta": True})
    groups = profconv.otlp_to_pprof(req)
    assert len(groups) == 1
    g = groups[0]
    assert g.resource["service.name"] == "svc"
    assert g.attributes == {"gotel.pprof.type": "heap", "gotel.pprof.delta": True}
    assert pprof.sample_type_names(g.profile) == HEAP_TYPES
    assert pprof.totals(g.profile) == pprof.totals(p)
    q = pprof.decode(pprof.encode(g.profile))  # the rebuilt profile is a valid pprof
    res = pprof.Resolver(q)
    leafs = {res.stack(s.location_id)[0].function: list(s.value) for s in q.sample}
    assert leafs["bytes.growSlice"] == [7, 4096, 0, 0]
    labelled = [s for s in q.sample if s.label]
    assert q.string_table[labelled[0].label[0].key] == "handler"


def test_original_payload_attached_once_and_used_back() -> None:
    p = heap()
    raw = pprof.encode(p)
    req = profconv.pprof_to_otlp(p, {"service.name": "svc"}, original_payload=raw)
    profs = req.resource_profiles[0].scope_profiles[0].profiles
    assert [x.original_payload_format for x in profs] == ["pprof", "", "", ""]
    assert profs[0].original_payload == raw
    g = profconv.otlp_to_pprof(req)[0]
    assert g.from_original and pprof.totals(g.profile) == pprof.totals(p)


def test_builder_many_profiles_one_request() -> None:
    b = profconv.ProfilesBuilder()
    b.add(heap(), {"service.name": "a"})
    b.add(heap(), {"service.name": "b"})
    req = b.build()
    assert len(req.resource_profiles) == 2
    # the second profile reused every function and stack of the first
    assert len(req.dictionary.function_table) == 1 + 5
    assert len(req.dictionary.stack_table) == 1 + 3
    assert len(profconv.otlp_to_pprof(req)) == 2
