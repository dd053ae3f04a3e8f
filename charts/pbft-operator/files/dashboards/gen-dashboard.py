#!/usr/bin/env python3
"""Writes pbft.json, the Grafana dashboard of the chart (run after editing).

The metric names are those of replica/src/server/metrics.rs as
prometheus-client exposes them (counters end in _total, units are suffixed:
_bytes, _seconds), and the pbft_operator_* names the chart README lists. The
label pbft_cluster comes from the chart's PodMonitor."""
import json, os

SEL = 'namespace="$namespace", pbft_cluster=~"$cluster"'
OSEL = 'namespace="$namespace", cluster=~"$cluster"'
panels = []
y = 0


def ts(title, exprs, unit="short", w=12, h=8, desc=""):
    global y
    x = 0 if not panels or panels[-1]["gridPos"]["x"] + panels[-1]["gridPos"]["w"] + w > 24 else panels[-1]["gridPos"]["x"] + panels[-1]["gridPos"]["w"]
    if x == 0 and panels:
        y = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    panels.append({
        "id": len(panels) + 1,
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l} for i, (e, l) in enumerate(exprs)],
    })


ts("Ready replicas", [
    (f'pbft_operator_cluster_ready_replicas{{{OSEL}}}', "{{cluster}} ready (operator)"),
    (f'pbft_operator_cluster_replicas{{{OSEL}}}', "{{cluster}} members (operator)"),
    (f'sum by (pbft_cluster) (pbft_ready{{{SEL}}})', "{{pbft_cluster}} ready (replicas)"),
], w=8, desc="Available needs 2f+1 ready members.")
ts("View and primary", [
    (f'max by (pod) (pbft_view{{{SEL}}})', "view {{pod}}"),
    (f'max by (pod) (pbft_primary{{{SEL}}})', "primary id seen by {{pod}}"),
], w=8)
ts("View changes started (5m)", [
    (f'sum by (pod) (increase(pbft_view_changes_total{{{SEL}}}[5m]))', "{{pod}}"),
], w=8)
ts("Requests executed per second", [
    (f'max by (pbft_cluster) (rate(pbft_batch_requests_sum{{{SEL}}}[1m]))', "{{pbft_cluster}}"),
], unit="reqps")
ts("Commit latency", [
    (f'histogram_quantile(0.5, sum by (le, pbft_cluster) (rate(pbft_commit_latency_seconds_bucket{{{SEL}}}[5m])))', "p50 {{pbft_cluster}}"),
    (f'histogram_quantile(0.99, sum by (le, pbft_cluster) (rate(pbft_commit_latency_seconds_bucket{{{SEL}}}[5m])))', "p99 {{pbft_cluster}}"),
], unit="s")
ts("Executed and stable sequence numbers", [
    (f'max by (pod) (pbft_executed_seq{{{SEL}}})', "executed {{pod}}"),
    (f'max by (pod) (pbft_stable_seq{{{SEL}}})', "stable {{pod}}"),
])
ts("Batch size (requests per batch, mean)", [
    (f'sum by (pbft_cluster) (rate(pbft_batch_requests_sum{{{SEL}}}[5m])) / sum by (pbft_cluster) (rate(pbft_batch_requests_count{{{SEL}}}[5m]))', "{{pbft_cluster}}"),
])
ts("Evidence of misbehaviour (1h)", [
    (f'sum by (pod, kind) (increase(pbft_evidence_total{{{SEL}}}[1h]))', "{{pod}} {{kind}}"),
], desc="Recorded by the reporting replica; the operator verifies and quarantines.")
ts("Evidence verified by the operator (1h)", [
    (f'sum by (cluster, kind, verified) (increase(pbft_operator_evidence_total{{{OSEL}}}[1h]))', "{{cluster}} {{kind}} verified={{verified}}"),
])
ts("Memory used / limit", [
    (f'max by (pod) (pbft_memory_used_bytes{{{SEL}}})', "used {{pod}}"),
    (f'max by (pod) (pbft_memory_limit_bytes{{{SEL}}})', "limit {{pod}}"),
    (f'max by (pod) (pbft_ledger_bytes{{{SEL}}})', "accounted buffers {{pod}}"),
], unit="bytes")
ts("Shed client requests", [
    (f'sum by (pod, reason) (rate(pbft_shed_requests_total{{{SEL}}}[5m]))', "{{pod}} {{reason}}"),
], unit="reqps", desc="RESOURCE_EXHAUSTED answers: memory above the soft limit, concurrency, queue.")
ts("Peer frames dropped before the core", [
    (f'sum by (pod, reason) (rate(pbft_messages_dropped_total{{{SEL}}}[5m]))', "{{pod}} {{reason}}"),
], unit="pps")
ts("Messages the core set aside", [
    (f'sum by (pod, reason) (rate(pbft_core_dropped_total{{{SEL}}}[5m]))', "{{pod}} {{reason}}"),
], unit="pps", desc="over_budget that persists means a primary's batches or a peer's votes do not fit this replica's buffers.")
ts("Connected peers", [
    (f'sum by (pod) (pbft_peer_connected{{{SEL}}})', "{{pod}}"),
])
ts("Write-ahead log", [
    (f'max by (pod) (pbft_wal_bytes{{{SEL}}})', "size {{pod}}"),
], unit="bytes")
ts("Operator reconciles", [
    ('sum by (result) (rate(pbft_operator_reconciliations_total[5m]))', "reconciles {{result}}"),
    ('sum (rate(pbft_operator_reconcile_errors_total[5m]))', "errors"),
], unit="ops")
ts("Operator reconcile duration (p99)", [
    ('histogram_quantile(0.99, sum by (le) (rate(pbft_operator_reconcile_duration_seconds_bucket[5m])))', "p99"),
], unit="s")

dash = {
    "title": "PBFT clusters",
    "uid": "pbft-clusters",
    "tags": ["pbft", "consensus"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
        {"name": "namespace", "label": "Namespace", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(pbft_view, namespace)", "refId": "ns"},
         "definition": "label_values(pbft_view, namespace)", "refresh": 2},
        {"name": "cluster", "label": "ConsensusCluster", "type": "query", "includeAll": True, "multi": True,
         "allValue": ".*",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": 'label_values(pbft_view{namespace="$namespace"}, pbft_cluster)', "refId": "cc"},
         "definition": 'label_values(pbft_view{namespace="$namespace"}, pbft_cluster)', "refresh": 2},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pbft.json")
with open(out, "w") as f:
    json.dump(dash, f, indent=2, sort_keys=True)
    f.write("\n")
print(out)
