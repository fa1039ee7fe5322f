# The gotel agent image. Build: docker build -t gotel:dev .
#
# The install steps are scripts/bootstrap.sh, the same script `make test` runs (one source of truth):
#   build time  --runtime --no-kernel : the Debian packages the agent runs with (BCC, a kernel header set,
#                                       bpftool), the venv with gotel and no test extras; nothing about the
#                                       build host's kernel.
#   start time  --runtime --no-apt --no-venv : links the shipped headers under /lib/modules/$(uname -r) of the node
#                                       it runs on (the DaemonSet mounts an emptyDir there) and mounts tracefs
#                                       if the node did not. gotel's BPF programs are header-light
#                                       (DESIGN.md section 6), so this header set compiles them on any kernel >= 5.8.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GOTEL_VENV=/opt/gotel/.venv \
    PATH=/opt/gotel/.venv/bin:$PATH

WORKDIR /opt/gotel
# what bootstrap needs to run at all; everything else is its job
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates bash \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml setup.py README.md ./
COPY scripts/ scripts/
COPY gotel/ gotel/
COPY receivers/ receivers/
COPY processors/ processors/
COPY exporters/ exporters/
COPY extensions/ extensions/
COPY connectors/ connectors/
COPY bpf/ bpf/
COPY config/ config/

RUN scripts/bootstrap.sh --runtime --no-kernel \
    && rm -rf /var/lib/apt/lists/* /root/.cache \
    && gotel --help >/dev/null

# Non-root by default (a gateway or pprof-only agent needs nothing more). The eBPF receivers need root
# in the container with a handful of capabilities: Kubernetes has no ambient capabilities, so a
# non-root process cannot use added ones. config/k8s/daemonset.yaml sets runAsUser: 0 for that reason
# and drops every other capability; see docs/kubernetes.md.
RUN useradd --system --uid 10001 --home-dir /var/lib/gotel --create-home gotel
USER 10001

EXPOSE 8888 4317 4318
ENTRYPOINT ["gotel"]
CMD ["run"]
