"""USDT argument specs as the BPF side will read them, and the usdt receiver's config rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gotel.ebpf.usdt import (
    ARG_CONST,
    ARG_REG,
    ARG_REG_DEREF,
    UsdtArgError,
    build_spec,
    parse_arg_spec,
)
from gotel.golang.usdt import USDTProbe, parse_arg
from gotel.receivers.usdt import Config


@pytest.mark.parametrize(
    ("spec", "kind", "size", "signed", "reg_off", "val_off"),
    [
        ("-4@%eax", ARG_REG, 4, True, 80, 0),
        ("8@%rdi", ARG_REG, 8, False, 112, 0),
        ("1@%sil", ARG_REG, 1, False, 104, 0),
        ("8@%r12", ARG_REG, 8, False, 24, 0),
        ("-8@-16(%rbp)", ARG_REG_DEREF, 8, True, 32, -16),
        ("4@0x10(%rsp)", ARG_REG_DEREF, 4, False, 152, 16),
        ("-4@$-5", ARG_CONST, 4, True, 0, -5),
        ("%rax", ARG_REG, 8, True, 80, 0),
    ],
)
def test_arg_specs(spec: str, kind: int, size: int, signed: bool, reg_off: int, val_off: int) -> None:
    loc = parse_arg_spec(spec)
    assert (loc.kind, loc.size, loc.signed, loc.reg_off, loc.val_off) == (kind, size, signed, reg_off, val_off)


@pytest.mark.parametrize("spec", ["8@(%rax,%rdx,8)", "3@%eax", "8@%xmm0", "garbage", "8@counter(%rip)"])
def test_unsupported_arg_specs_say_so(spec: str) -> None:
    with pytest.raises(UsdtArgError):
        parse_arg_spec(spec)


def test_build_spec_marks_string_slots() -> None:
    spec = "-8@%rbx 8@%r12 -4@$-5"
    p = USDTProbe("app", "start", 0x1000, 0x1000, 0, 0, tuple(parse_arg(a) for a in spec.split()), spec)
    s = build_spec(3, p, {1: 0})
    assert (s.probe_id, s.nargs) == (3, 3)
    assert [s.args[i].str_slot for i in range(3)] == [0xFF, 0, 0xFF]
    with pytest.raises(UsdtArgError, match="arg4 does not exist"):
        build_spec(3, p, {4: 0})


def test_receiver_config_rules() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        Config()
    with pytest.raises(ValidationError, match="provider:name"):
        Config(counters=[{"probe": "nocolon", "name": "x"}])
    with pytest.raises(ValidationError, match="both as a string and as a number"):
        Config(counters=[{"probe": "a:b", "name": "x", "attributes": {"k": "arg1:str", "n": "arg1"}}])
    with pytest.raises(ValidationError, match="at most two string"):
        Config(logs=[{"probe": "a:b", "attributes": {"x": "arg0:str", "y": "arg1:str", "z": "arg2:str"}}])
    with pytest.raises(ValidationError, match="numeric"):
        Config(histograms=[{"probe": "a:b", "name": "h", "value": "arg0:str"}])
    with pytest.raises(ValidationError, match="extra"):
        Config(counters=[{"probe": "a:b", "name": "x", "attribtues": {}}])
    c = Config(spans=[{"name": "r", "start": "a:s", "end": "a:e", "start_attributes": {"route": "arg1:str"}}])
    assert c.probes() == ["a:e", "a:s"]
    assert c.string_args() == {"a:s": {1: 0}}


def test_registered_as_an_entry_point_that_needs_bpf() -> None:
    from gotel.component.contract import Kind, ReceiverFactory
    from gotel.component.registry import registry

    f = registry().get(Kind.RECEIVER, "usdt")
    assert isinstance(f, ReceiverFactory)
    assert f.needs_bpf and f.type == "usdt"
    assert {str(s) for s in f.signals} == {"traces", "metrics", "logs"}
