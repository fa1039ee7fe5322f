"""One compiled program, per-binary struct offsets in a BPF map: the HTTP method and path a uprobe on
net/http.serverHandler.ServeHTTP reads through the offsets DWARF gave for *this* binary equal what the
requests sent — for two Go versions at once, served by the same loaded program. A stripped binary gets
"offset unknown" and the program reads nothing rather than guessing."""

from __future__ import annotations

import contextlib
import ctypes
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from gotel.ebpf.goprobes import GoTargets
from gotel.ebpf.program import BpfProgram
from gotel.ebpf.targets import function_sites, struct_offset
from gotel.golang import analyze
from tests.integration.ebpf.conftest import gotel_uprobe_events

PROGRAM = r"""
#include "gotel_go.h"
#include "gotel_ringbuf.h"

#define OFF_METHOD 0   /* net/http.Request.Method */
#define OFF_URL 1      /* net/http.Request.URL (a pointer) */
#define OFF_PATH 2     /* net/url.URL.Path */

struct req_event {
    u32 pid;
    u32 flags;        /* 1: method offset unknown, 2: path offsets unknown */
    char method[16];
    char path[64];
};
GOTEL_RINGBUF(req_events, 16);

int on_serve_http(struct pt_regs *ctx) {
    struct gotel_go_proc *p = gotel_go_current();
    if (!p)
        return 0;
    struct req_event *e = gotel_reserved(req_events.ringbuf_reserve(sizeof(*e)));
    if (!e)
        return 0;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->flags = 0;
    e->method[0] = 0;
    e->path[0] = 0;
    u64 req = GO_PARAM4(ctx);  /* (serverHandler{srv}: ax, ResponseWriter: bx+cx, *Request: di) */
    u64 off = gotel_go_offset(p, OFF_METHOD);
    u64 s[2] = {};
    if (off == GOTEL_GO_OFFSET_UNKNOWN) {
        e->flags |= 1;
    } else if (bpf_probe_read_user(s, sizeof(s), (void *)(req + off)) == 0) {
        gotel_go_read_str(e->method, sizeof(e->method), s[0], s[1]);
    }
    u64 url_off = gotel_go_offset(p, OFF_URL), path_off = gotel_go_offset(p, OFF_PATH);
    u64 url = 0;
    if (url_off == GOTEL_GO_OFFSET_UNKNOWN || path_off == GOTEL_GO_OFFSET_UNKNOWN) {
        e->flags |= 2;
    } else if (bpf_probe_read_user(&url, sizeof(url), (void *)(req + url_off)) == 0 && url &&
               bpf_probe_read_user(s, sizeof(s), (void *)(url + path_off)) == 0) {
        gotel_go_read_str(e->path, sizeof(e->path), s[0], s[1]);
    }
    req_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}
"""

FIELDS = [("net/http.Request", "Method"), ("net/http.Request", "URL"), ("net/url.URL", "Path")]


class ReqEvent(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("method", ctypes.c_char * 16),
                ("path", ctypes.c_char * 64)]


def _request(app: Any, method: str, path: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{app.port('http')}{path}", method=method)
    with contextlib.suppress(urllib.error.HTTPError):  # the status does not matter here
        urllib.request.urlopen(req, timeout=30).read()


def test_offsets_map_serves_two_go_versions_and_a_stripped_binary(goapp: Callable[..., Any]) -> None:
    apps = {
        "go1.19": goapp("httpapp", "server", toolchain="go1.19"),
        "go1.27": goapp("httpapp", "server", toolchain="go1.27"),
        "stripped": goapp("httpapp", "server", toolchain="go1.27", stripped=True),
    }
    prog = BpfProgram(PROGRAM)
    got: list[tuple[int, int, str, str]] = []

    def on(addr: int, size: int) -> None:
        e = ReqEvent.from_address(addr)
        got.append((e.pid, e.flags, e.method.decode(), e.path.decode()))

    prog.open_ring_buffer("req_events", on)
    try:
        targets = GoTargets(prog, [f"{t}.{f}" for t, f in FIELDS])
        for app in apps.values():
            gb = analyze(str(app.binary))
            offsets = {f"{t}.{f}": struct_offset(gb, t, f) for t, f in FIELDS}
            assert (None in offsets.values()) is (app is apps["stripped"])
            sites = function_sites(str(app.binary), ["net/http.serverHandler.ServeHTTP"], "on_serve_http")
            assert len(sites) >= 2  # entry + RETs (only the entry runs this function's logic)
            targets.add_process(app.pid, f"/proc/{app.pid}/exe", sites[:1], offsets)
        sent = {}
        for name, app in apps.items():
            sent[app.pid] = [("GET", f"/{name}/a"), ("POST", f"/{name}/b/c"), ("DELETE", "/x" * 20)]
            for m, p in sent[app.pid]:
                _request(app, m, p)
        prog.consume()
        for name, app in apps.items():
            mine = [(f, m, p) for pid, f, m, p in got if pid == app.pid]
            if name == "stripped":
                assert mine == [(3, "", "")] * 3, "no DWARF: nothing read, nothing guessed"
            else:
                assert mine == [(0, m, p) for m, p in sent[app.pid]]
        assert prog.lost_counts() == (0, 0)
        # one binary id per binary, one program for all
        assert len({targets.bin_id(k) for k in (targets._pid_binary[a.pid] for a in apps.values())}) == 3
    finally:
        prog.close()
    assert gotel_uprobe_events() == []
