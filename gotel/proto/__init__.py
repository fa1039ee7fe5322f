"""Wire schemas gotel writes that have no package on PyPI: Loki's push request and Prometheus remote-write 1.0.

The .proto files are written from the documented field numbers; the *_pb2 modules are generated from
them by grpcio-tools (scripts/genproto.sh) and committed. The exporters encode on their hot path by
hand (gotel.protowire) and the tests check the bytes against these generated classes.
"""
