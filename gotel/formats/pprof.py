"""Reading and writing Go pprof profiles (perftools.profiles.Profile, gotel/proto/pprof_profile.proto).

Python has no maintained pprof library, so the schema is compiled with protobuf and this module adds
what every user of it needs: gzip sniffing with a size cap, structural validation (a body that
parses as protobuf by accident is not a profile), and frame resolution.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from gotel.proto import pprof_profile_pb2 as pb

Profile = pb.Profile
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_BYTES = 256 << 20


class PprofError(ValueError):
    """The bytes are not a usable pprof profile; the message says why."""


def gunzip(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Inflates gzip with a cap, so a gzip bomb cannot take the receiver's memory."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, max_bytes)
    except zlib.error as e:
        raise PprofError(f"corrupt gzip: {e}") from None
    if d.unconsumed_tail:
        raise PprofError(f"profile inflates to more than {max_bytes} bytes")
    if not d.eof:
        raise PprofError(f"truncated gzip: stream ended after {len(data)} bytes before its end marker")
    return out


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> pb.Profile:
    """gzip or raw protobuf -> Profile, validated enough that later code can index without checks."""
    if not data:
        raise PprofError("empty body")
    raw = gunzip(data, max_bytes) if data[:2] == GZIP_MAGIC else data
    p = pb.Profile()
    try:
        p.ParseFromString(raw)
    except DecodeError as e:
        raise PprofError(f"not a pprof protobuf: {e}") from None
    validate(p)
    return p


def validate(p: pb.Profile) -> None:
    """Every index and id the profile holds points at something: later code indexes without checks.
    The message names the field, e.g. ``mapping[0].filename 57: string_table has 12 entries``."""
    n_str = len(p.string_table)
    if n_str == 0 or p.string_table[0] != "":
        raise PprofError("not a pprof profile: string_table[0] must be the empty string")
    if not p.sample_type:
        raise PprofError("not a pprof profile: no sample_type")

    def string(i: int, field: str) -> None:
        if not 0 <= i < n_str:
            raise PprofError(f"not a pprof profile: {field} {i}: string_table has {n_str} entries")

    for n, vt in enumerate(p.sample_type):
        string(vt.type, f"sample_type[{n}].type")
        string(vt.unit, f"sample_type[{n}].unit")
    string(p.period_type.type, "period_type.type")
    string(p.period_type.unit, "period_type.unit")
    string(p.drop_frames, "drop_frames")
    string(p.keep_frames, "keep_frames")
    string(p.default_sample_type, "default_sample_type")
    for n, c in enumerate(p.comment):
        string(c, f"comment[{n}]")
    n_types = len(p.sample_type)
    loc_ids = {loc.id for loc in p.location}
    fn_ids = {f.id for f in p.function}
    map_ids = {m.id for m in p.mapping}
    for n, m in enumerate(p.mapping):
        string(m.filename, f"mapping[{n}].filename")
        string(m.build_id, f"mapping[{n}].build_id")
    for n, f in enumerate(p.function):
        string(f.name, f"function[{n}].name")
        string(f.system_name, f"function[{n}].system_name")
        string(f.filename, f"function[{n}].filename")
    for loc in p.location:
        if loc.mapping_id and loc.mapping_id not in map_ids:
            raise PprofError(f"not a pprof profile: location {loc.id} refers to unknown mapping {loc.mapping_id}")
        for ln in loc.line:
            if ln.function_id not in fn_ids:
                raise PprofError(f"not a pprof profile: location {loc.id} refers to unknown function {ln.function_id}")
    for n, s in enumerate(p.sample):
        if len(s.value) != n_types:
            raise PprofError(f"not a pprof profile: sample[{n}] has {len(s.value)} values for {n_types} sample types")
        for lid in s.location_id:
            if lid not in loc_ids:
                raise PprofError(f"not a pprof profile: sample[{n}] refers to unknown location {lid}")
        for k, lb in enumerate(s.label):
            string(lb.key, f"sample[{n}].label[{k}].key")
            string(lb.str, f"sample[{n}].label[{k}].str")
            string(lb.num_unit, f"sample[{n}].label[{k}].num_unit")


def encode(p: pb.Profile, compress: bool = True) -> bytes:
    raw: bytes = p.SerializeToString()
    if not compress:
        return raw
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def sample_type_names(p: pb.Profile) -> list[tuple[str, str]]:
    st = p.string_table
    return [(st[vt.type], st[vt.unit]) for vt in p.sample_type]


def sample_type_index(p: pb.Profile, name: str) -> int:
    for i, (t, _u) in enumerate(sample_type_names(p)):
        if t == name:
            return i
    raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int


class Resolver:
    """Location id -> frames (inlined callee first), built once per profile."""

    def __init__(self, p: pb.Profile) -> None:
        st = p.string_table
        fns = {f.id: (st[f.name], st[f.filename]) for f in p.function}
        self.locs: dict[int, tuple[Frame, ...]] = {}
        for loc in p.location:
            frames = []
            for ln in loc.line:
                name, fname = fns.get(ln.function_id, ("?", ""))
                frames.append(Frame(name, fname, ln.line))
            if not frames:
                frames.append(Frame(f"0x{loc.address:x}", "", 0))
            self.locs[loc.id] = tuple(frames)

    def stack(self, location_ids: Iterator[int] | list[int] | tuple[int, ...]) -> list[Frame]:
        """Leaf first, as in pprof."""
        out: list[Frame] = []
        for lid in location_ids:
            out.extend(self.locs.get(lid, ()))
        return out


def totals(p: pb.Profile) -> list[int]:
    """Sum of every sample type's values: the number tests and users compare across conversions."""
    sums = [0] * len(p.sample_type)
    for s in p.sample:
        for i, v in enumerate(s.value):
            sums[i] += v
    return sums
