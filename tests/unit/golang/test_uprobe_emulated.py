"""Which x86-64 instructions a uprobe handles without single-stepping (emulated in the kernel): the
placement rule behind every go_ebpf site. The byte patterns are those Go's compiler emits."""

from __future__ import annotations

import pytest

from gotel.golang.disasm import call_sites, uprobe_emulated


@pytest.mark.parametrize("code", [
    "90", "6690", "0f1f00", "0f1f4000", "0f1f440000",  # NOPs, incl. the 5-byte one Go pads with
    "55", "4154",  # push rbp, push r12
    "e800000000", "e9000000", "eb01",  # call rel32, jmp rel32, jmp rel8
    "7610", "0f8610000000",  # jbe rel8 / rel32: the stack-check branch
])
def test_emulated(code: str) -> None:
    assert uprobe_emulated(bytes.fromhex(code))


@pytest.mark.parametrize("code", [
    "c3",  # ret: a probe on every RET is single-stepped
    "5d",  # pop rbp
    "4883ec08", "4881ec10010000",  # sub rsp
    "493b6610", "4c8d6424f8",  # cmp rsp,[r14+16]; lea r12,[rsp-8]
    "ffd6", "41ffd0",  # call rsi, call r8: indirect
    "4889e5",  # mov rbp, rsp
    "48e800000000",  # REX.W call: not a form the kernel emulates
    "",
])
def test_single_stepped(code: str) -> None:
    assert not uprobe_emulated(bytes.fromhex(code))


def test_call_sites_find_direct_calls_only() -> None:
    base = 0x1000
    # call +5 (-> 0x100a), nop, call rsi, call -0x10 (-> 0x0ffd)
    code = bytes.fromhex("e805000000" "90" "ffd6" "e8f0ffffff")
    found = call_sites(code, base, {0x100A, 0x0FFD, 0x2000})
    assert found == {0x100A: [0x1000], 0x0FFD: [0x1008], 0x2000: []}
