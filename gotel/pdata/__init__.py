"""Pipeline data: signal batches held as OTLP protobuf, their builders, the OTLP/JSON mapping and hand-written wire encoding."""
