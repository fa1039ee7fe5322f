"""The Go 1.27 runtime's own leak detector (goroutineleak profile) seen through the pprof receiver.

The runtime fixture's leak is on a global (reachable) channel, which the runtime rightly does not call
a leak; this test builds a small program whose goroutines block on channels nobody else can reach.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from gotel.pdata.batch import get_attr
from tests.helpers import goapps
from tests.helpers.pprofkit import log_records, metric_points

from .conftest import Harness, aget

pytestmark = pytest.mark.slow

SRC = r'''package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"strconv"
)

//go:noinline
func orphanWorker(ch chan int) {
	<-ch // nobody else holds ch: blocked forever, unreachable
}

//go:noinline
func startOrphans(n int) {
	for i := 0; i < n; i++ {
		go orphanWorker(make(chan int))
	}
}

func main() {
	addr := flag.String("pprof", "127.0.0.1:0", "")
	flag.Parse()
	http.HandleFunc("/orphans", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		startOrphans(n)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b, _ := json.Marshal(map[string]interface{}{"pid": os.Getpid(), "ports": map[string]int{"pprof": ln.Addr().(*net.TCPAddr).Port}})
	fmt.Printf("READY %s\n", b)
	http.Serve(ln, nil)
}
'''


def build_orphans() -> Path:
    key = hashlib.sha256((SRC + goapps.go_version("go1.27")).encode()).hexdigest()[:16]
    out = goapps.CACHE / "bin" / f"orphans-{key}"
    if out.exists():
        return out
    src = goapps.CACHE / "src" / f"orphans-{key}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_text(SRC)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run([str(goapps.go_tool("go1.27")), "build", "-o", str(tmp), "."], cwd=src,
                   env=goapps._go_env("go1.27"), check=True, capture_output=True)
    tmp.rename(out)
    return out


async def test_runtime_detected_leak_named_with_wait_reason_and_creator() -> None:
    app = goapps.RunningApp([str(build_orphans())])
    h = Harness([{"endpoint": f"http://127.0.0.1:{app.port()}", "service_name": "orphans"}])
    try:
        await h.scrape("goroutineleak")
        leaked = [dp.as_int for _r, dp in metric_points(h.sinks["metrics"], "gotel.goroutine.leaked")]
        assert leaked == [0]
        await aget(app.url("/orphans?n=7"))
        await h.scrape("goroutineleak")
        leaked = [dp.as_int for _r, dp in metric_points(h.sinks["metrics"], "gotel.goroutine.leaked")]
        assert leaked == [0, 7]
        recs = [r for r in log_records(h.sinks["logs"]) if r.event_name == "gotel.goroutine.leaked"]
        assert len(recs) == 1
        a = recs[0].attributes
        assert get_attr(a, "gotel.goroutine.leaked") == 7
        assert get_attr(a, "gotel.goroutine.wait.reason") == "chan receive"
        assert get_attr(a, "code.function.name") == "main.orphanWorker"
        assert get_attr(a, "gotel.goroutine.created_by") == "main.startOrphans"
        assert "detected by the Go runtime" in recs[0].body.string_value
        await h.scrape("goroutineleak")  # the same leak is not reported again
        assert len([r for r in log_records(h.sinks["logs"]) if r.event_name == "gotel.goroutine.leaked"]) == 1
    finally:
        await h.close()
        app.stop()
