"""Component types of the OpenTelemetry Collector (core and contrib distributions) that gotel knows by
name, so that a collector config naming one gotel lacks gets one clear error ("gotel has no connector
spanmetrics yet") instead of "unknown type". docs/collector-compatibility.md is the human side of it."""

from __future__ import annotations

from gotel.component.contract import Kind

COMPAT_DOC = "docs/collector-compatibility.md"

def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Type names as written in collector configs, older aliases included (span_metrics and spanmetrics);
# with the Jaeger v2 distribution's own (jaeger_storage, jaeger_query, ...).
COLLECTOR_TYPES: dict[Kind, frozenset[str]] = {
    Kind.RECEIVER: _names("""
        otlp nop jaeger zipkin opencensus prometheus prometheus_simple hostmetrics filelog journald
        kafka kafkametrics k8s_cluster k8s_events k8sobjects kubeletstats docker_stats syslog tcplog udplog
        fluentforward statsd carbon collectd redis postgresql mysql mongodb elasticsearch nginx apache
        haproxy rabbitmq memcached zookeeper kafkametrics sqlquery sqlserver oracledb snmp httpcheck
        awsxray awsecscontainermetrics awscloudwatch awscontainerinsightreceiver datadog splunk_hec
        signalfx sapm skywalking windowseventlog windowsperfcounters podman_stats receiver_creator
        otlpjsonfile loki pulsar influxdb googlecloudpubsub azureeventhub azureblob purefa purefb
        vcenter iis couchdb cloudflare chrony expvar filestats flinkmetrics github gitlab
        jmx nsxt riak saphana snowflake solace webhookevent zookeeper otelarrow envoyals faro
        active_directory_ds aerospike apachespark bigip cloudfoundry
        """),
    Kind.PROCESSOR: _names("""
        batch memory_limiter filter redaction probabilistic_sampler
        transform span k8sattributes k8s_attributes resourcedetection resource_detection
        cumulativetodelta deltatocumulative deltatorate groupbyattrs groupbytrace interval
        metricstransform metricsgeneration metricstarttime logdedup geoip schema remotetap
        routing experimental_metricsgeneration sumologic coralogix isolationforest
        """),
    Kind.EXPORTER: _names("""
        otlp otlphttp otlp_http debug logging nop file prometheus prometheusremotewrite
        prometheus_remote_write loki jaeger zipkin kafka loadbalancing elasticsearch opensearch
        clickhouse datadog splunk_hec signalfx sapm awsxray awsemf awscloudwatchlogs awss3 awskinesis
        azuremonitor azuredataexplorer azureblob googlecloud googlecloudpubsub googlemanagedprometheus
        influxdb carbon cassandra coralogix honeycombmarker logicmonitor logzio mezmo otelarrow pulsar
        rabbitmq sentry sumologic syslog tencentcloud_logservice alibabacloud_logservice dataset doris
        faro stef tinybird bmchelix pyroscope jaeger_storage_exporter
        """),
    Kind.CONNECTOR: _names("""
        spanmetrics span_metrics servicegraph service_graph forward count routing roundrobin
        exceptions failover grafanacloud datadog signaltometrics sum otlpjson
        """),
    Kind.EXTENSION: _names("""
        health_check healthcheckv2 pprof zpages file_storage db_storage redis_storage
        bearertokenauth basicauth oauth2client oidc headers_setter sigv4auth asapclient azureauth
        googleclientauth jaegerremotesampling opamp docker_observer ecs_observer ecs_task_observer
        host_observer k8s_observer kafkatopics_observer http_forwarder awsproxy ack cgroupruntime
        datadog sumologic k8s_leader_elector memory_ballast
        jaeger_storage jaeger_query remote_sampling expvar
        """),
}


def is_collector_type(kind: Kind, typ: str) -> bool:
    """Whether `typ` is a component type of the collector distributions (not a typo)."""
    return typ in COLLECTOR_TYPES.get(kind, frozenset())
