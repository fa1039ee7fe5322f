"""A seeded mutator of valid pprof profiles and OTLP profile requests, and the contract every
conversion must keep on whatever it produces: convert, or refuse with an error that names the field.

`python -m tests.unit.pprof.fuzzprof N SEED` runs N cases and writes every input that breaks the
contract to tests/unit/pprof/fuzz_corpus/ (the regression inputs test_fuzz_profconv.py replays).
"""

from __future__ import annotations

import hashlib
import random
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from gotel.formats import pprof, profconv
from gotel.proto import pprof_profile_pb2 as pb
from tests.helpers.pprofkit import HEAP_TYPES, make_profile

CORPUS = Path(__file__).with_name("fuzz_corpus")
INTS = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64)


def seed_pprof() -> pb.Profile:
    p = make_profile(
        HEAP_TYPES,
        [(["main.work", "main.main"], [1, 512, 1, 512]),
         (["runtime.mallocgc", "main.work", "main.main"], [3, 96, 0, 0]),
         (["main.idle"], [7, 7, 7, 7])],
        labels=[{"handler": "/a"}, {}, {"handler": "/b"}],
        period=("space", "bytes", 524288),
    )
    # every kind of reference a converter follows: a build id (an attribute in OTLP), a numeric
    # label with a unit, and a location without lines
    p.string_table.extend(["abc123", "bytes_label", "bytes"])
    p.mapping[0].build_id = len(p.string_table) - 3
    lb = p.sample[1].label.add()
    lb.key, lb.num, lb.num_unit = len(p.string_table) - 2, 4096, len(p.string_table) - 1
    loc = p.location.add()
    loc.id, loc.mapping_id, loc.address = 99, 1, 0x401234
    p.sample[2].location_id.append(99)
    p.duration_nanos = 10_000_000_000
    return p


def seed_otlp() -> ExportProfilesServiceRequest:
    b = profconv.ProfilesBuilder()
    b.add(seed_pprof(), {"service.name": "fuzz"}, profile_attributes={profconv.PROFILE_TYPE_ATTR: "heap"})
    return b.build()


def _int_fields(msg: Message, path: str = "") -> Iterator[tuple[Message, FieldDescriptor, int | None, str]]:
    """Every integer field (and element of a repeated one) below msg, with its path."""
    for fd in msg.DESCRIPTOR.fields:
        name = f"{path}.{fd.name}" if path else fd.name
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for i, sub in enumerate(getattr(msg, fd.name)):
                    yield from _int_fields(sub, f"{name}[{i}]")
            elif msg.HasField(fd.name):
                yield from _int_fields(getattr(msg, fd.name), name)
        elif fd.type in INTS:
            if fd.is_repeated:
                for i in range(len(getattr(msg, fd.name))):
                    yield msg, fd, i, f"{name}[{i}]"
            else:
                yield msg, fd, None, name


def _repeated_messages(msg: Message) -> Iterator[Any]:
    for fd in msg.DESCRIPTOR.fields:
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.is_repeated:
            field = getattr(msg, fd.name)
            if len(field):
                yield field
            for sub in field:
                yield from _repeated_messages(sub)
        elif msg.HasField(fd.name):
            yield from _repeated_messages(getattr(msg, fd.name))


def _bound(fd: FieldDescriptor, v: int) -> int:
    if fd.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        v = abs(v)
    if fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_UINT32):
        v = max(min(v, 2**31 - 1), -(2**31))
    return v


def mutate(msg: Message, rng: random.Random) -> bytes:
    """1-3 mutations of a copy: an integer set to an edge value, a table entry deleted, or bytes flipped."""
    m = type(msg)()
    m.CopyFrom(msg)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.65:
            fields = list(_int_fields(m))
            owner, fd, i, _path = rng.choice(fields)
            cur = getattr(owner, fd.name)[i] if i is not None else getattr(owner, fd.name)
            v = _bound(fd, rng.choice([-1, 0, 1, cur + 1, cur - 1, cur + rng.randint(2, 50), 2**31 - 1, -(2**31),
                                       rng.randint(-1000, 1000)]))
            if i is not None:
                getattr(owner, fd.name)[i] = v
            else:
                setattr(owner, fd.name, v)
        elif op < 0.9:
            reps = list(_repeated_messages(m))
            if reps:
                field = rng.choice(reps)
                del field[rng.randrange(len(field))]
        else:
            raw = bytearray(m.SerializeToString())
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            return bytes(raw)
    return m.SerializeToString()


# --- the contract ---------------------------------------------------------------------------------


def check_pprof(data: bytes) -> None:
    """decode refuses with PprofError, or what it accepts converts and resolves without an error."""
    try:
        p = pprof.decode(data)
    except pprof.PprofError as e:
        assert str(e), "a refusal must say why"
        return
    b = profconv.ProfilesBuilder()
    b.add(p, {"service.name": "fuzz"})
    pprof.totals(p)
    r = pprof.Resolver(p)
    for s in p.sample:
        r.stack(s.location_id)


def check_otlp(data: bytes) -> None:
    """otlp_to_pprof converts, or refuses with MalformedProfile naming the field; the drop callback
    sees every profile it leaves out."""
    req = ExportProfilesServiceRequest()
    try:
        req.ParseFromString(data)
    except DecodeError:
        return
    drops: list[tuple[int, str]] = []
    groups = profconv.otlp_to_pprof(req, on_drop=lambda n, why: drops.append((n, why)))
    for _n, why in drops:
        assert why and ("[" in why or "." in why), f"a drop must name the field: {why!r}"
    for g in groups:
        pprof.validate(g.profile)  # what comes out is a valid pprof
        pprof.encode(g.profile)
    try:
        profconv.otlp_totals(req)
    except profconv.MalformedProfile as e:
        assert str(e)


def run(n: int, seed: int, save: bool = False) -> list[tuple[str, str, bytes]]:
    """n cases per direction; returns (kind, where it broke, input) for every contract break."""
    rng = random.Random(seed)
    seeds = {"pprof": seed_pprof(), "otlp": seed_otlp()}
    checks = {"pprof": check_pprof, "otlp": check_otlp}
    broken: list[tuple[str, str, bytes]] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(n):
        for kind in ("pprof", "otlp"):
            data = mutate(seeds[kind], rng)
            try:
                checks[kind](data)
            except Exception as e:
                tb = traceback.extract_tb(e.__traceback__)[-1]
                where = f"{type(e).__name__} at {Path(tb.filename).name}:{tb.lineno}"
                if (kind, where) in seen:
                    continue
                seen.add((kind, where))
                broken.append((kind, where, data))
                if save:
                    CORPUS.mkdir(exist_ok=True)
                    name = f"{kind}-{hashlib.sha256(data).hexdigest()[:12]}.pb"
                    (CORPUS / name).write_bytes(data)
    return broken


if __name__ == "__main__":
    for kind, where, data in run(int(sys.argv[1]), int(sys.argv[2]), save=True):
        print(kind, where, len(data))
