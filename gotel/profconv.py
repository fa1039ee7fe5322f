"""pprof <-> OTLP profiles (v1development), both directions in one place.

Forward: one pprof with N sample types becomes N OTLP ``Profile``s that share one request-wide
``ProfilesDictionary`` (every table starts with its zero value at index 0, as the spec requires).
Backward (for the Pyroscope exporter and ``gotel flame``): the Profiles of one scope that share
time, period and profile attributes are joined again into one pprof with one column per sample type.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from gotel import pprof
from gotel.pdata import attrs, value_of
from gotel.proto import pprof_profile_pb2 as pb

SCOPE_NAME = "gotel.pprof"
BUILD_ID_ATTR = "process.executable.build_id.gnu"
# Profile attributes gotel sets, read back by the Pyroscope exporter.
PROFILE_TYPE_ATTR = "gotel.pprof.type"  # cpu, heap, allocs, mutex, block, goroutine, goroutineleak, ...
DELTA_ATTR = "gotel.pprof.delta"  # true when cumulative values were turned into deltas (by gotel or the target)


class ProfilesBuilder:
    """Builds one ExportProfilesServiceRequest from any number of pprofs with a shared dictionary."""

    def __init__(self) -> None:
        self.req = ExportProfilesServiceRequest()
        d = self.req.dictionary
        self._d = d
        self._strings: dict[str, int] = {"": 0}
        d.string_table.append("")
        d.mapping_table.add()
        d.location_table.add()
        d.function_table.add()
        d.link_table.add()
        d.attribute_table.add()
        d.stack_table.add()
        self._functions: dict[tuple[int, int, int, int], int] = {}
        self._mappings: dict[tuple[int, int, int, int, int], int] = {}
        self._locations: dict[tuple[Any, ...], int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}
        self._attrs: dict[tuple[int, Any, int], int] = {}
        self._resources: dict[tuple[tuple[str, str], ...], Any] = {}

    # --- interning -------------------------------------------------------------------------------

    def s(self, text: str) -> int:
        i = self._strings.get(text)
        if i is None:
            i = len(self._strings)
            self._strings[text] = i
            self._d.string_table.append(text)
        return i

    def attr(self, key: str, value: Any, unit: str = "") -> int:
        k = (self.s(key), value, self.s(unit) if unit else 0)
        i = self._attrs.get(k)
        if i is None:
            i = len(self._d.attribute_table)
            a = self._d.attribute_table.add()
            a.key_strindex = k[0]
            if isinstance(value, bool):
                a.value.bool_value = value
            elif isinstance(value, int):
                a.value.int_value = value
            elif isinstance(value, float):
                a.value.double_value = value
            else:
                a.value.string_value = str(value)
            a.unit_strindex = k[2]
            self._attrs[k] = i
        return i

    def _stack(self, locs: tuple[int, ...]) -> int:
        i = self._stacks.get(locs)
        if i is None:
            i = len(self._d.stack_table)
            self._d.stack_table.add().location_indices.extend(locs)
            self._stacks[locs] = i
        return i

    def _scope(self, resource: Mapping[str, Any], scope_name: str, scope_version: str) -> Any:
        key = tuple(sorted((k, repr(v)) for k, v in resource.items())) + (("\0scope", scope_name),)
        sp = self._resources.get(key)
        if sp is None:
            rp = self.req.resource_profiles.add()
            rp.resource.attributes.extend(attrs(dict(resource)))
            sp = rp.scope_profiles.add()
            sp.scope.name = scope_name
            sp.scope.version = scope_version
            self._resources[key] = sp
        return sp

    # --- conversion ------------------------------------------------------------------------------

    def add(
        self,
        p: pb.Profile,
        resource: Mapping[str, Any],
        *,
        profile_attributes: Mapping[str, Any] | None = None,
        sample_types: Iterable[str] | None = None,
        original_payload: bytes | None = None,
        scope_name: str = SCOPE_NAME,
        scope_version: str = "",
    ) -> list[Any]:
        """Adds one pprof; returns the OTLP Profiles made (one per selected sample type)."""
        st = p.string_table
        s = self.s
        d = self._d
        # functions and mappings
        fn_map: dict[int, int] = {}
        for f in p.function:
            key = (s(st[f.name]), s(st[f.system_name]), s(st[f.filename]), f.start_line)
            i = self._functions.get(key)
            if i is None:
                i = len(d.function_table)
                nf = d.function_table.add()
                nf.name_strindex, nf.system_name_strindex, nf.filename_strindex, nf.start_line = key
                self._functions[key] = i
            fn_map[f.id] = i
        map_map: dict[int, int] = {}
        for m in p.mapping:
            build = st[m.build_id] if m.build_id else ""
            bidx = self.attr(BUILD_ID_ATTR, build) if build else 0
            mkey = (m.memory_start, m.memory_limit, m.file_offset, s(st[m.filename]), bidx)
            i = self._mappings.get(mkey)
            if i is None:
                i = len(d.mapping_table)
                nm = d.mapping_table.add()
                nm.memory_start, nm.memory_limit, nm.file_offset, nm.filename_strindex = mkey[:4]
                if bidx:
                    nm.attribute_indices.append(bidx)
                self._mappings[mkey] = i
            map_map[m.id] = i
        loc_map: dict[int, int] = {}
        for loc in p.location:
            lines = tuple((fn_map.get(ln.function_id, 0), ln.line, ln.column) for ln in loc.line)
            lkey = (map_map.get(loc.mapping_id, 0), loc.address, lines)
            i = self._locations.get(lkey)
            if i is None:
                i = len(d.location_table)
                nl = d.location_table.add()
                nl.mapping_index = lkey[0]
                nl.address = loc.address
                for fi, line, col in lines:
                    x = nl.lines.add()
                    x.function_index = fi
                    x.line = line
                    x.column = col
                self._locations[lkey] = i
            loc_map[loc.id] = i

        names = pprof.sample_type_names(p)
        wanted = set(sample_types) if sample_types is not None else None
        cols = [j for j, (t, _u) in enumerate(names) if wanted is None or t in wanted]
        sp = self._scope(resource, scope_name, scope_version)
        prof_attr_idx = [self.attr(k, v) for k, v in (profile_attributes or {}).items() if v is not None]
        out = []
        for n, j in enumerate(cols):
            op = sp.profiles.add()
            op.sample_type.type_strindex = s(names[j][0])
            op.sample_type.unit_strindex = s(names[j][1])
            op.time_unix_nano = max(p.time_nanos, 0)
            op.duration_nano = max(p.duration_nanos, 0)
            if p.HasField("period_type"):
                op.period_type.type_strindex = s(st[p.period_type.type])
                op.period_type.unit_strindex = s(st[p.period_type.unit])
            op.period = p.period
            op.profile_id = os.urandom(16)
            op.attribute_indices.extend(prof_attr_idx)
            if original_payload is not None and n == 0:
                # Once per pprof, not once per sample type: the payload holds every column.
                op.original_payload_format = "pprof"
                op.original_payload = original_payload
            out.append(op)
        # samples: stacks and labels interned once, then one value per profile/sample type
        lab_cache: dict[tuple[Any, ...], list[int]] = {}
        loc_get = loc_map.__getitem__
        stacks_get = self._stacks.get
        adds = [op.samples.add for op in out]
        pairs = list(zip(adds, cols, strict=True))
        for smp in p.sample:
            skey = tuple(map(loc_get, smp.location_id))
            stack = stacks_get(skey)
            if stack is None:
                stack = self._stack(skey)
            aidx: list[int] = []
            if smp.label:
                lk = tuple((lb.key, lb.str, lb.num, lb.num_unit) for lb in smp.label)
                cached = lab_cache.get(lk)
                if cached is None:
                    cached = []
                    for k_, sv, num, unit in lk:
                        if sv:
                            cached.append(self.attr(st[k_], st[sv]))
                        else:
                            cached.append(self.attr(st[k_], num, st[unit] if unit else ""))
                    lab_cache[lk] = cached
                aidx = cached
            vals = smp.value
            for add, j in pairs:
                v = vals[j]
                if v:
                    if aidx:
                        add(stack_index=stack, attribute_indices=aidx, values=(v,))
                    else:
                        add(stack_index=stack, values=(v,))
        return out

    def build(self) -> ExportProfilesServiceRequest:
        return self.req


def pprof_to_otlp(
    p: pb.Profile,
    resource: Mapping[str, Any],
    **kw: Any,
) -> ExportProfilesServiceRequest:
    b = ProfilesBuilder()
    b.add(p, resource, **kw)
    return b.build()


# --- backward ----------------------------------------------------------------------------------


@dataclass
class PprofGroup:
    """One pprof rebuilt from the OTLP Profiles of one scope that belong together."""

    resource: dict[str, Any]
    scope_name: str
    attributes: dict[str, Any]
    profile: pb.Profile
    from_original: bool = False
    sample_types: list[str] = field(default_factory=list)


def _any(av: AnyValue) -> Any:
    return value_of(av)


def otlp_to_pprof(req: Any) -> list[PprofGroup]:
    """ExportProfilesServiceRequest (or ProfilesData) -> pprofs, one per group of Profiles."""
    d = req.dictionary
    st = d.string_table

    def sget(i: int) -> str:
        return st[i] if 0 <= i < len(st) else ""

    def attr_items(indices: Iterable[int]) -> list[tuple[str, Any, str]]:
        out = []
        for i in indices:
            if 0 < i < len(d.attribute_table):
                a = d.attribute_table[i]
                out.append((sget(a.key_strindex), _any(a.value), sget(a.unit_strindex)))
        return out

    groups: list[PprofGroup] = []
    for rp in req.resource_profiles:
        resource = {kv.key: value_of(kv.value) for kv in rp.resource.attributes}
        for sp in rp.scope_profiles:
            by_key: dict[tuple[Any, ...], list[Any]] = {}
            for op in sp.profiles:
                pattrs = tuple((k, repr(v)) for k, v, _u in attr_items(op.attribute_indices))
                key = (
                    op.time_unix_nano, op.duration_nano, op.period,
                    sget(op.period_type.type_strindex), sget(op.period_type.unit_strindex), pattrs,
                )
                by_key.setdefault(key, []).append(op)
            for profs in by_key.values():
                pattrs_d = {k: v for k, v, _u in attr_items(profs[0].attribute_indices)}
                orig = next((op for op in profs if op.original_payload_format == "pprof" and op.original_payload), None)
                if orig is not None:
                    try:
                        p0 = pprof.decode(orig.original_payload)
                        groups.append(PprofGroup(resource, sp.scope.name, pattrs_d, p0, True,
                                                 [t for t, _u in pprof.sample_type_names(p0)]))
                        continue
                    except pprof.PprofError:
                        pass  # fall back to rebuilding from the samples
                groups.append(_rebuild(d, resource, sp.scope.name, pattrs_d, profs))
    return groups


def _rebuild(d: Any, resource: dict[str, Any], scope: str, pattrs: dict[str, Any], profs: list[Any]) -> PprofGroup:
    st = d.string_table
    p = pb.Profile()
    strings: dict[str, int] = {"": 0}
    p.string_table.append("")

    def s(text: str) -> int:
        i = strings.get(text)
        if i is None:
            i = len(strings)
            strings[text] = i
            p.string_table.append(text)
        return i

    def sget(i: int) -> str:
        return st[i] if 0 <= i < len(st) else ""

    n = len(profs)
    for op in profs:
        vt = p.sample_type.add()
        vt.type = s(sget(op.sample_type.type_strindex))
        vt.unit = s(sget(op.sample_type.unit_strindex))
    first = profs[0]
    p.time_nanos = first.time_unix_nano
    p.duration_nanos = first.duration_nano
    p.period = first.period
    if first.period_type.type_strindex or first.period_type.unit_strindex:
        p.period_type.type = s(sget(first.period_type.type_strindex))
        p.period_type.unit = s(sget(first.period_type.unit_strindex))

    fn_ids: dict[int, int] = {}
    map_ids: dict[int, int] = {}
    loc_ids: dict[int, int] = {}

    def fn(i: int) -> int:
        r = fn_ids.get(i)
        if r is None:
            f = d.function_table[i] if 0 < i < len(d.function_table) else None
            r = len(fn_ids) + 1
            nf = p.function.add()
            nf.id = r
            if f is not None:
                nf.name = s(sget(f.name_strindex))
                nf.system_name = s(sget(f.system_name_strindex))
                nf.filename = s(sget(f.filename_strindex))
                nf.start_line = f.start_line
            fn_ids[i] = r
        return r

    def mapping(i: int) -> int:
        if not 0 < i < len(d.mapping_table):
            return 0
        r = map_ids.get(i)
        if r is None:
            m = d.mapping_table[i]
            r = len(map_ids) + 1
            nm = p.mapping.add()
            nm.id = r
            nm.memory_start, nm.memory_limit, nm.file_offset = m.memory_start, m.memory_limit, m.file_offset
            nm.filename = s(sget(m.filename_strindex))
            for ai in m.attribute_indices:
                a = d.attribute_table[ai]
                if sget(a.key_strindex) == BUILD_ID_ATTR:
                    nm.build_id = s(a.value.string_value)
            nm.has_functions = True
            map_ids[i] = r
        return r

    def loc(i: int) -> int:
        r = loc_ids.get(i)
        if r is None:
            src = d.location_table[i]
            r = len(loc_ids) + 1
            nl = p.location.add()
            nl.id = r
            nl.mapping_id = mapping(src.mapping_index)
            nl.address = src.address
            for ln in src.lines:
                x = nl.line.add()
                x.function_id = fn(ln.function_index)
                x.line = ln.line
                x.column = ln.column
            loc_ids[i] = r
        return r

    rows: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for j, op in enumerate(profs):
        for smp in op.samples:
            key = (smp.stack_index, tuple(smp.attribute_indices))
            row = rows.get(key)
            if row is None:
                row = rows[key] = [0] * n
            row[j] += sum(smp.values) if smp.values else 1
    for (stack_i, aidx), vals in rows.items():
        ns = p.sample.add()
        if 0 < stack_i < len(d.stack_table):
            ns.location_id.extend(loc(li) for li in d.stack_table[stack_i].location_indices if li > 0)
        ns.value.extend(vals)
        for ai in aidx:
            if not 0 < ai < len(d.attribute_table):
                continue
            a = d.attribute_table[ai]
            lb = ns.label.add()
            lb.key = s(sget(a.key_strindex))
            kind = a.value.WhichOneof("value")
            if kind == "int_value":
                lb.num = a.value.int_value
                if a.unit_strindex:
                    lb.num_unit = s(sget(a.unit_strindex))
            elif kind == "string_value_strindex":
                lb.str = s(sget(a.value.string_value_strindex))
            else:
                lb.str = s(str(_any(a.value)))
    return PprofGroup(resource, scope, pattrs, p, False, [sget(op.sample_type.type_strindex) for op in profs])


def otlp_totals(req: Any) -> dict[str, int]:
    """Sum of values per sample type across a request (what a test compares with pprof.totals)."""
    st = req.dictionary.string_table
    out: dict[str, int] = {}
    for rp in req.resource_profiles:
        for sp in rp.scope_profiles:
            for op in sp.profiles:
                name = st[op.sample_type.type_strindex]
                out[name] = out.get(name, 0) + sum(v for smp in op.samples for v in smp.values)
    return out
