"""Profiles whose resource and scope attributes are string-table indices (as the collector sends them
over OTLP/HTTP) are read as plain attributes; batches without indices keep their wire bytes."""

from __future__ import annotations

from gotel.pdata.batch import Profiles, attr_dict
from tests.helpers import otlp_samples


def referenced() -> Profiles:
    b = otlp_samples.profiles()
    m = b.msg
    base = len(m.dictionary.string_table)
    m.dictionary.string_table.extend(["service.name", "checkout", "k8s.labels", "team", "a", "b", "tags"])
    res = m.resource_profiles[0].resource.attributes
    del res[:]
    kv = res.add()
    kv.key_strindex = base
    kv.value.string_value_strindex = base + 1
    nested = res.add()
    nested.key = "k8s.labels"  # a plain key beside referenced ones, with a referenced value inside a kvlist
    inner = nested.value.kvlist_value.values.add()
    inner.key_strindex = base + 3
    inner.value.string_value_strindex = base + 4
    arr = res.add()
    arr.key_strindex = base + 6
    arr.value.array_value.values.add().string_value_strindex = base + 5
    arr.value.array_value.values.add().int_value = 7
    scope = m.resource_profiles[0].scope_profiles[0].scope.attributes.add()
    scope.key_strindex = base
    scope.value.string_value_strindex = 999  # out of range: left as it is, never an IndexError
    return Profiles(raw=m.SerializeToString())


def test_references_become_plain_attributes() -> None:
    b = referenced()
    assert b.resolve_string_refs() is True
    m = b.peek()
    assert attr_dict(m.resource_profiles[0].resource.attributes) == {
        "service.name": "checkout", "k8s.labels": {"team": "a"}, "tags": ["b", 7]}
    (scope,) = m.resource_profiles[0].scope_profiles[0].scope.attributes
    assert scope.key == "service.name" and scope.value.string_value_strindex == 999
    # the wire bytes are those of the resolved message
    assert attr_dict(Profiles.parse(b.to_bytes()).peek().resource_profiles[0].resource.attributes)["service.name"] \
        == "checkout"


def test_plain_profiles_keep_their_wire_bytes() -> None:
    p = otlp_samples.profiles()
    labels = p.msg.resource_profiles[0].resource.attributes.add()
    labels.key = "k8s.labels"
    labels.value.kvlist_value.values.add(key="team").value.string_value = "a"
    raw = p.to_bytes()
    b = Profiles(raw=raw)
    assert b.resolve_string_refs() is False
    assert b.to_bytes() is raw
