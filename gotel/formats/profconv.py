"""pprof <-> OTLP profiles (v1development), both directions in one place.

Forward: one pprof with N sample types becomes N OTLP ``Profile``s that share one request-wide
``ProfilesDictionary`` (every table starts with its zero value at index 0, as the spec requires).
Backward (for the Pyroscope exporter and ``gotel flame``): the Profiles of one scope that share
time, period and profile attributes are joined again into one pprof with one column per sample type.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from gotel.formats import pprof
from gotel.pdata.batch import attrs, value_of
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
        key = (*tuple(sorted((k, repr(v)) for k, v in resource.items())), ("\x00scope", scope_name))
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

    def add(  # noqa: C901 (one pass per sample's locations: split, it would add calls per sample)
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
        """Adds one pprof; returns the OTLP Profiles made (one per selected sample type).

        Raises pprof.PprofError naming the field when the profile refers outside its own tables,
        before anything is added (checking costs about a fifth of the conversion)."""
        pprof.validate(p)
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


class MalformedProfile(pprof.PprofError):
    """An OTLP profile refers outside its dictionary (or holds a value pprof cannot); the message
    names the field, e.g. ``profiles[0].samples[3].stack_index 9: stack_table has 4 entries``."""


def _entry(table: Any, i: int, field: str, table_name: str) -> Any:
    """table[i] for a dictionary reference; index 0 is the null entry (None when the table is empty)."""
    if i == 0 and not len(table):
        return None
    if not 0 <= i < len(table):
        raise MalformedProfile(f"{field} {i}: {table_name} has {len(table)} entries")
    return table[i]


def _string(d: Any, i: int, field: str) -> str:
    v = _entry(d.string_table, i, field, "string_table")
    return "" if v is None else str(v)


def _attributes(d: Any, indices: Iterable[int], field: str) -> list[tuple[str, Any, str]]:
    out = []
    for n, i in enumerate(indices):
        a = _entry(d.attribute_table, i, f"{field}[{n}]", "attribute_table")
        if a is None or i == 0:
            continue
        at = f"attribute_table[{i}]"
        out.append((_string(d, a.key_strindex, f"{at}.key_strindex"), _any(d, a.value, at),
                    _string(d, a.unit_strindex, f"{at}.unit_strindex")))
    return out


def _any(d: Any, av: AnyValue, field: str) -> Any:
    if av.WhichOneof("value") == "string_value_strindex":  # only in some proto versions
        return _string(d, getattr(av, "string_value_strindex"), f"{field}.value.string_value_strindex")  # noqa: B009
    return value_of(av)


def _time(v: int, field: str) -> int:
    if v >= 1 << 63:
        raise MalformedProfile(f"{field} {v} is beyond what pprof can hold (int64 nanoseconds)")
    return v


def otlp_to_pprof(req: Any, on_drop: Callable[[int, str], None] | None = None) -> list[PprofGroup]:
    """ExportProfilesServiceRequest (or ProfilesData) -> pprofs, one per group of Profiles.

    Every dictionary reference is checked. A group that refers outside its dictionary is left out:
    ``on_drop(number of OTLP profiles, reason naming the field)`` is called for it, so the caller can
    count and say what it dropped; without on_drop the first MalformedProfile is raised.
    """
    d = req.dictionary
    groups: list[PprofGroup] = []

    def drop(n: int, e: MalformedProfile) -> None:
        if on_drop is None:
            raise e
        on_drop(n, str(e))

    for ri, rp in enumerate(req.resource_profiles):
        resource = {kv.key: value_of(kv.value) for kv in rp.resource.attributes}
        for si, sp in enumerate(rp.scope_profiles):
            by_key: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
            for pi, op in enumerate(sp.profiles):
                where = f"resource_profiles[{ri}].scope_profiles[{si}].profiles[{pi}]"
                try:
                    items = _attributes(d, op.attribute_indices, f"{where}.attribute_indices")
                    key = (
                        op.time_unix_nano, op.duration_nano, op.period,
                        _string(d, op.period_type.type_strindex, f"{where}.period_type.type_strindex"),
                        _string(d, op.period_type.unit_strindex, f"{where}.period_type.unit_strindex"),
                        tuple((k, repr(v)) for k, v, _u in items),
                    )
                except MalformedProfile as e:
                    drop(1, e)
                    continue
                by_key.setdefault(key, []).append((where, op))
            for members in by_key.values():
                first_where, first = members[0]
                pattrs_d = {k: v for k, v, _u in _attributes(d, first.attribute_indices, first_where)}
                profs = [op for _w, op in members]
                orig = next((op for op in profs if op.original_payload_format == "pprof" and op.original_payload), None)
                if orig is not None:
                    try:
                        p0 = pprof.decode(orig.original_payload)
                        groups.append(PprofGroup(resource, sp.scope.name, pattrs_d, p0, True,
                                                 [t for t, _u in pprof.sample_type_names(p0)]))
                        continue
                    except pprof.PprofError:
                        pass  # fall back to rebuilding from the samples
                try:
                    groups.append(_rebuild(d, resource, sp.scope.name, pattrs_d, members))
                except MalformedProfile as e:
                    drop(len(members), e)
    return groups


def _rebuild(d: Any, resource: dict[str, Any], scope: str, pattrs: dict[str, Any],  # noqa: C901 (the OTLP dictionary rebuilt table by table in one pass)
             members: list[tuple[str, Any]]) -> PprofGroup:
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

    def ds(i: int, field: str) -> int:
        return s(_string(d, i, field))

    n = len(members)
    names = []
    for where, op in members:
        vt = p.sample_type.add()
        names.append(_string(d, op.sample_type.type_strindex, f"{where}.sample_type.type_strindex"))
        vt.type = s(names[-1])
        vt.unit = ds(op.sample_type.unit_strindex, f"{where}.sample_type.unit_strindex")
    where0, first = members[0]
    p.time_nanos = _time(first.time_unix_nano, f"{where0}.time_unix_nano")
    p.duration_nanos = _time(first.duration_nano, f"{where0}.duration_nano")
    p.period = first.period
    if first.period_type.type_strindex or first.period_type.unit_strindex:
        p.period_type.type = ds(first.period_type.type_strindex, f"{where0}.period_type.type_strindex")
        p.period_type.unit = ds(first.period_type.unit_strindex, f"{where0}.period_type.unit_strindex")

    fn_ids: dict[int, int] = {}
    map_ids: dict[int, int] = {}
    loc_ids: dict[int, int] = {}

    def fn(i: int, field: str) -> int:
        r = fn_ids.get(i)
        if r is None:
            f = _entry(d.function_table, i, field, "function_table")
            r = len(fn_ids) + 1
            nf = p.function.add()
            nf.id = r
            if f is not None and i:
                at = f"function_table[{i}]"
                nf.name = ds(f.name_strindex, f"{at}.name_strindex")
                nf.system_name = ds(f.system_name_strindex, f"{at}.system_name_strindex")
                nf.filename = ds(f.filename_strindex, f"{at}.filename_strindex")
                nf.start_line = f.start_line
            fn_ids[i] = r
        return r

    def mapping(i: int, field: str) -> int:
        m = _entry(d.mapping_table, i, field, "mapping_table")
        if m is None or i == 0:
            return 0
        r = map_ids.get(i)
        if r is None:
            at = f"mapping_table[{i}]"
            r = len(map_ids) + 1
            nm = p.mapping.add()
            nm.id = r
            nm.memory_start, nm.memory_limit, nm.file_offset = m.memory_start, m.memory_limit, m.file_offset
            nm.filename = ds(m.filename_strindex, f"{at}.filename_strindex")
            for k, v, _u in _attributes(d, m.attribute_indices, f"{at}.attribute_indices"):
                if k == BUILD_ID_ATTR:
                    nm.build_id = s(str(v))
            nm.has_functions = True
            map_ids[i] = r
        return r

    def loc(i: int, field: str) -> int:
        r = loc_ids.get(i)
        if r is None:
            src = _entry(d.location_table, i, field, "location_table")
            at = f"location_table[{i}]"
            r = len(loc_ids) + 1
            nl = p.location.add()
            nl.id = r
            nl.mapping_id = mapping(src.mapping_index, f"{at}.mapping_index")
            nl.address = src.address
            for k, ln in enumerate(src.lines):
                x = nl.line.add()
                x.function_id = fn(ln.function_index, f"{at}.lines[{k}].function_index")
                x.line = ln.line
                x.column = ln.column
            loc_ids[i] = r
        return r

    rows: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    origin: dict[tuple[int, tuple[int, ...]], str] = {}
    for j, (where, op) in enumerate(members):
        for k, smp in enumerate(op.samples):
            key = (smp.stack_index, tuple(smp.attribute_indices))
            row = rows.get(key)
            if row is None:
                row = rows[key] = [0] * n
                origin[key] = f"{where}.samples[{k}]"
            row[j] += sum(smp.values) if smp.values else 1
    for (stack_i, aidx), vals in rows.items():
        at = origin[(stack_i, aidx)]
        ns = p.sample.add()
        stack = _entry(d.stack_table, stack_i, f"{at}.stack_index", "stack_table")
        if stack is not None and stack_i:
            for li in stack.location_indices:
                # 0 is the null location: skipped (the builder never writes it inside a stack)
                if li:
                    ns.location_id.append(loc(li, f"stack_table[{stack_i}].location_indices"))
        ns.value.extend(vals)
        for ai in aidx:
            a = _entry(d.attribute_table, ai, f"{at}.attribute_indices", "attribute_table")
            if a is None or ai == 0:
                continue
            aat = f"attribute_table[{ai}]"
            lb = ns.label.add()
            lb.key = ds(a.key_strindex, f"{aat}.key_strindex")
            kind = a.value.WhichOneof("value")
            if kind == "int_value":
                lb.num = a.value.int_value
                if a.unit_strindex:
                    lb.num_unit = ds(a.unit_strindex, f"{aat}.unit_strindex")
            else:
                lb.str = s(str(_any(d, a.value, aat)))
    return PprofGroup(resource, scope, pattrs, p, False, names)


def otlp_totals(req: Any) -> dict[str, int]:
    """Sum of values per sample type across a request (what a test compares with pprof.totals)."""
    d = req.dictionary
    out: dict[str, int] = {}
    for ri, rp in enumerate(req.resource_profiles):
        for si, sp in enumerate(rp.scope_profiles):
            for pi, op in enumerate(sp.profiles):
                where = f"resource_profiles[{ri}].scope_profiles[{si}].profiles[{pi}].sample_type.type_strindex"
                name = _string(d, op.sample_type.type_strindex, where)
                out[name] = out.get(name, 0) + sum(v for smp in op.samples for v in smp.values)
    return out
