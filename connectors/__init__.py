"""Connectors (installed as gotel.connectors): the exporter of one pipeline and the receiver of others
(DESIGN.md section 4), e.g. span_metrics turning a traces pipeline's spans into a metrics pipeline's input."""
