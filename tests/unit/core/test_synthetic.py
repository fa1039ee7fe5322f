"""synthetic receiver: rates kept by elapsed time, exact max_items, low rates, prebuilt requests."""

from __future__ import annotations

import asyncio
import time

from gotel.component.contract import Kind, RefusedError
from gotel.pdata.batch import Batch, Signal, attr_dict, get_attr
from gotel.receivers.synthetic import Config, Generator, SyntheticReceiver
from tests.unit.core.conftest import Tel


class Sink:
    mutates = False

    def __init__(self, refuse: bool = False) -> None:
        self.got: list[Batch] = []
        self.refuse = refuse

    async def consume(self, batch: Batch) -> None:
        if self.refuse:
            raise RefusedError("memory")
        self.got.append(batch)

    def count(self) -> int:
        return sum(b.item_count() for b in self.got)


async def run_for(cfg: Config, sinks: dict[Signal, Sink], seconds: float, tel: Tel) -> SyntheticReceiver:
    r = SyntheticReceiver(cfg, sinks, tel.ctx("synthetic", Kind.RECEIVER))  # type: ignore[arg-type]
    await r.start()
    await asyncio.sleep(seconds)
    await r.shutdown()
    return r


async def test_max_items_exact_and_unique(tel: Tel) -> None:
    sink = Sink()
    await run_for(Config(spans_per_second=20000, batch_size=64, max_items=1000), {Signal.TRACES: sink}, 1.5, tel)
    assert sink.count() == 1000
    seqs = [get_attr(s.attributes, "gotel.synthetic.seq") for b in sink.got for rs in b.peek().resource_spans
            for ss in rs.scope_spans for s in ss.spans]
    assert sorted(seqs) == list(range(1000))
    assert max(b.item_count() for b in sink.got) <= 64
    assert tel.value("receiver_accepted_items_total", component="synthetic", kind="receiver", signal="traces") == 1000


async def test_rate_is_kept(tel: Tel) -> None:
    sink = Sink()
    t0 = time.monotonic()
    await run_for(Config(logs_per_second=400, batch_size=50), {Signal.LOGS: sink}, 1.0, tel)
    elapsed = time.monotonic() - t0
    assert 0.5 * 400 * elapsed <= sink.count() <= 400 * elapsed + 50


async def test_low_rates_still_produce(tel: Tel) -> None:
    sink = Sink()
    await run_for(Config(profiles_per_second=2), {Signal.PROFILES: sink}, 1.4, tel)
    assert sink.count() >= 2
    p = sink.got[0].peek()
    prof = p.resource_profiles[0].scope_profiles[0].profiles[0]
    d = p.dictionary
    # a well-formed profile: its stack resolves through the dictionary to function names
    stack = d.stack_table[prof.samples[0].stack_index]
    names = [d.string_table[d.function_table[d.location_table[i].lines[0].function_index].name_strindex]
             for i in stack.location_indices]
    assert names == ["main.work", "main.handler", "main.main"]


async def test_refused_data_is_counted_not_retried(tel: Tel) -> None:
    await run_for(Config(spans_per_second=100, batch_size=10, max_items=50), {Signal.TRACES: Sink(refuse=True)}, 1.0, tel)
    assert tel.value("receiver_refused_items_total", component="synthetic", kind="receiver", signal="traces") == 50


async def test_prebuilt_resends_bytes_and_resource(tel: Tel) -> None:
    sink = Sink()
    cfg = Config(spans_per_second=50000, batch_size=500, prebuilt=True, max_items=5000, process_pid=4242,
                 service_name="bench", resource_attributes={"k8s.pod.name": "p"})
    await run_for(cfg, {Signal.TRACES: sink}, 1.0, tel)
    assert sink.count() == 5000
    sizes = {b.item_count() for b in sink.got}
    distinct = {b.to_bytes() for b in sink.got}
    assert len(distinct) <= 4 * len(sizes) and len(distinct) < len(sink.got)  # a few variants per size, re-sent
    res = attr_dict(sink.got[0].peek().resource_spans[0].resource.attributes)
    assert res["process.pid"] == 4242 and res["service.name"] == "bench" and res["k8s.pod.name"] == "p"


def test_metrics_are_counted_in_data_points() -> None:
    b = Generator(Config()).metrics(7)
    assert b.item_count() == 7
