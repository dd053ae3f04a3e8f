#!/usr/bin/env bash
# Checks the install paths: the Helm chart charts/pbft-operator, the plain
# manifest deploy/pbft-operator.yaml and the sample ConsensusClusters in
# examples/. Prints PASS/FAIL/SKIP per check and exits non-zero on any FAIL.
#
#   scripts/check-manifests.sh                    # offline checks (no cluster)
#   KUBECONFIG=/var/lib/pbft-testbed/kubeconfig scripts/check-manifests.sh
#                                                 # + server-side dry-runs
#
# Offline:
#   crd-sync          chart's files/crds copy == crds/consensuscluster.yaml
#   lint/<set>        helm lint --strict (default values, every value set in charts/pbft-operator/ci/;
#                     fault-injection: the e2e install, the only one passing --allow-fault-injection)
#   render/<set>      helm template succeeds; the objects are well formed
#                     (apiVersion, kind, name, namespace, no duplicates), carry
#                     the chart labels, meet Pod Security "restricted", RBAC
#                     has no wildcard or escalation verbs, the Deployment
#                     passes the operator's flags/env/ports/probes, the CRD
#                     equals crds/ apart from labels and the keep annotation
#   schema/<case>     values.schema.json rejects bad values (replicaCount "two", unknown keys, ...)
#   guard/<case>      the templates refuse inconsistent values (2 pods without leader election)
#   monitoring-gate   ServiceMonitor/PodMonitor/PrometheusRule render only when the API is served
#   metric-names      every pbft_* metric in the alerts and the dashboard is one
#                     replica/src/server/metrics.rs exports (pbft_operator_* listed in the chart README)
#   dashboard         the dashboard JSON parses and is the one in the ConfigMap
#   drift             deploy/pbft-operator.yaml == a fresh scripts/render-manifests.sh
#   examples/<file>   each examples/*.yaml is a ConsensusCluster valid against
#                     the CRD's OpenAPI schema (types, unknown fields, enums,
#                     bounds, patterns; CEL rules need the apiserver)
#   promtool          `promtool check rules` on the alerts, when promtool is on PATH
#   sh-lint/test-hook  shellcheck -s sh of the helm test pod's script, when shellcheck is on PATH
# With a reachable KUBECONFIG (creates a throw-away namespace; installs the
# CRD for real only when it is absent, and removes it again afterwards):
#   dry-run/<set>     kubectl apply --dry-run=server --validate=strict of every render
#   dry-run/deploy    ... of deploy/pbft-operator.yaml
#   dry-run/examples/<file>  ... of each example (CEL rules included)
#   psa/operator-pod  the operator's pod template admitted as a Pod under Pod
#                     Security "restricted" (the namespace enforces it, so the
#                     helm test Pods of the renders are checked too)
#
# Tools: $HELM / $KUBECTL, else on PATH, else the test bed's cached builds
# (e2e/testbed/versions.env); python3 with PyYAML.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/pbft-operator"
# shellcheck source=scripts/render-manifests.sh
source "$ROOT/scripts/render-manifests.sh"
set +e  # (render-manifests.sh sets -e; this script counts failures instead)

PASSED=0 FAILED=0 SKIPPED=0 FAILS=()
pass() { printf 'PASS  %s\n' "$1"; PASSED=$((PASSED + 1)); }
fail() { printf 'FAIL  %s: %s\n' "$1" "$2"; FAILED=$((FAILED + 1)); FAILS+=("$1"); }
skip() { printf 'SKIP  %s: %s\n' "$1" "$2"; SKIPPED=$((SKIPPED + 1)); }
indent() { sed 's/^/      /'; }

WORK="$(mktemp -d)"
CLEANUP=()
cleanup() {
  local c
  for c in "${CLEANUP[@]}"; do eval "$c" || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

HELM="$(find_helm)" || exit 2
find_kubectl() {
  if [[ -n "${KUBECTL:-}" ]]; then echo "$KUBECTL"; return; fi
  if command -v kubectl >/dev/null 2>&1; then command -v kubectl; return; fi
  local bin; bin="$(source "$ROOT/e2e/testbed/versions.env" >/dev/null 2>&1; echo "${K8S_BIN:-}")/kubectl"
  [[ -x "$bin" ]] && echo "$bin"
}
PY=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' 2>/dev/null; then PY="$p"; break; fi
done
[[ -n "$PY" ]] || { echo "python3 with PyYAML is needed (Debian: python3-yaml)" >&2; exit 2; }
echo "helm: $HELM ($("$HELM" version --short 2>/dev/null))"

# ---------------------------------------------------------------- python checks
read -r -d '' PYCHECK <<'PYEOF'
import json, os, re, sys, yaml

def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
BAD_VERBS = {"*", "escalate", "bind", "impersonate"}
errors = []
def err(msg): errors.append(msg)

def restricted(where, spec):
    """Pod Security Standard "restricted" (the parts a template can get wrong)."""
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key): err(f"{where}: {key}")
    for v in spec.get("volumes") or []:
        if not ({"emptyDir", "configMap", "secret", "projected", "downwardAPI", "persistentVolumeClaim", "ephemeral", "csi"} & set(v)):
            err(f"{where}: volume {v.get('name')} of a type restricted forbids")
    for c in (spec.get("initContainers") or []) + spec.get("containers", []):
        sc = c.get("securityContext") or {}
        n = f"{where} container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False: err(f"{n}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []): err(f"{n}: capabilities must drop ALL")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")): err(f"{n}: runAsNonRoot")
        if sc.get("readOnlyRootFilesystem") is not True: err(f"{n}: readOnlyRootFilesystem")
        if (sc.get("runAsUser", psc.get("runAsUser")) or 0) == 0: err(f"{n}: runs as uid 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"): err(f"{n}: seccompProfile RuntimeDefault")
        if sc.get("privileged"): err(f"{n}: privileged")
        for p in c.get("ports") or []:
            if p.get("hostPort"): err(f"{n}: hostPort")

def check_render(path, crd_path, expect):
    """expect: JSON with ns, keep (bool), crd (bool), leader (bool), watch (str)."""
    ex = json.loads(expect)
    objs = docs(path)
    seen = set()
    kinds = {}
    for o in objs:
        for k in ("apiVersion", "kind", "metadata"):
            if k not in o: err(f"object without {k}: {str(o)[:80]}"); break
        else:
            md = o["metadata"]; kind = o["kind"]
            if not md.get("name"): err(f"{kind} without a name")
            ns = md.get("namespace")
            if kind in CLUSTER_SCOPED and ns: err(f"{kind}/{md['name']}: cluster-scoped with a namespace")
            if kind not in CLUSTER_SCOPED and not ns: err(f"{kind}/{md['name']}: no namespace")
            key = (kind, ns, md["name"])
            if key in seen: err(f"duplicate {key}")
            seen.add(key)
            kinds.setdefault(kind, []).append(o)
            hook = (md.get("annotations") or {}).get("helm.sh/hook")
            want = "pbft-operator-test" if hook == "test" else "pbft-operator"
            if (md.get("labels") or {}).get("app.kubernetes.io/name") != want:
                err(f"{kind}/{md['name']}: label app.kubernetes.io/name: {want} missing")
    # No Service or NetworkPolicy of the chart may select the helm test pod.
    for o in kinds.get("Pod", []):
        pl = o["metadata"].get("labels") or {}
        for s in kinds.get("Service", []):
            sel = s["spec"].get("selector") or {}
            if sel and sel.items() <= pl.items(): err(f"Service/{s['metadata']['name']} selects Pod/{o['metadata']['name']}")
        for d in kinds.get("Deployment", []):
            if d["spec"]["selector"]["matchLabels"].items() <= pl.items(): err(f"Deployment selector matches Pod/{o['metadata']['name']}")
        if pl.get("app.kubernetes.io/name") == "pbft-operator":
            err(f"Pod/{o['metadata']['name']} would be admitted to replicas' admin port")
    # The Deployment: the operator's contract.
    deps = kinds.get("Deployment", [])
    if len(deps) != 1: err(f"{len(deps)} Deployments")
    for d in deps:
        pod = d["spec"]["template"]
        if pod["metadata"]["labels"].get("app.kubernetes.io/name") != "pbft-operator":
            err("operator pods lack app.kubernetes.io/name: pbft-operator (replica NetworkPolicies admit the admin port from it)")
        if d["spec"]["selector"]["matchLabels"].items() - pod["metadata"]["labels"].items():
            err("Deployment selector does not match its pod labels")
        spec = pod["spec"]
        restricted("Deployment", spec)
        c = spec["containers"][0]
        args = c.get("args", [])
        if c.get("command") != ["/usr/local/bin/pbft-operator"]: err(f"command {c.get('command')}")
        if not args or args[0] != "run": err("first argument must be `run`")
        want = ["--replica-image=", "--metrics-listen=0.0.0.0:", "--leader-election=", "--log-format="]
        if ex["leader"]: want += ["--lease-name=", "--lease-namespace=$(POD_NAMESPACE)"]
        if ex["watch"]: want += [f"--watch-namespace={ex['watch']}"]
        for w in want:
            if not any(a.startswith(w) for a in args): err(f"operator args lack {w}")
        if f"--leader-election={'true' if ex['leader'] else 'false'}" not in args: err("--leader-election value")
        # Fault injection (Byzantine replicas on request) only when the values ask for it.
        faulty = [a for a in args if a.startswith("--allow-fault-injection") or a.startswith("--fault-injection-image")]
        if ex.get("faults"):
            if faulty != ["--allow-fault-injection=true", "--fault-injection-image=pbft-replica-faulty:0.1.0"]:
                err(f"fault-injection args: {faulty}")
        elif faulty: err(f"fault injection enabled without faultInjection.enabled: {faulty}")
        env = {e["name"]: e for e in c.get("env", [])}
        for n, fp in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
            if ((env.get(n) or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != fp:
                err(f"env {n} must come from {fp}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if "http-metrics" not in ports: err("no http-metrics port")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz": err("liveness probe not /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz": err("readiness probe not /readyz")
        if not (c.get("resources") or {}).get("limits", {}).get("memory"): err("no memory limit")
        if not ex["leader"] and d["spec"].get("strategy", {}).get("type") != "Recreate":
            err("without leader election the Deployment must use Recreate")
    for p in kinds.get("Pod", []):
        restricted(f"Pod/{p['metadata']['name']}", p["spec"])
        if (p["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test":
            err(f"Pod/{p['metadata']['name']} is not a helm test hook")
    # RBAC.
    for kind in ("ClusterRole", "Role"):
        for r in kinds.get(kind, []):
            for rule in r.get("rules", []):
                if BAD_VERBS & set(rule.get("verbs", [])): err(f"{kind}/{r['metadata']['name']}: verbs {rule['verbs']}")
                if "*" in rule.get("resources", []) or "*" in rule.get("apiGroups", []): err(f"{kind}/{r['metadata']['name']}: wildcard")
                if "leases" in rule.get("resources", []) and kind == "ClusterRole": err("Leases granted cluster-wide")
    if ex["watch"] and kinds.get("ClusterRole"): err("watchNamespace set but a ClusterRole rendered")
    # The CRD.
    crds = kinds.get("CustomResourceDefinition", [])
    if ex["crd"] != bool(crds): err(f"CRD rendered: {bool(crds)}, expected {ex['crd']}")
    for crd in crds:
        src = docs(crd_path)[0]
        ann = crd["metadata"].get("annotations") or {}
        if ex["keep"] != (ann.get("helm.sh/resource-policy") == "keep"): err("helm.sh/resource-policy: keep annotation")
        got = json.loads(json.dumps(crd))
        for k in ("labels", "annotations"): got["metadata"].pop(k, None)
        if got != src: err("rendered CRD differs from crds/consensuscluster.yaml beyond labels/annotations")
    print(" ".join(sorted(f"{k}={len(v)}" for k, v in kinds.items())))

def metric_names(metrics_rs, *files):
    """pbft_* names used in FILES that replica/src/server/metrics.rs does not export."""
    src = open(metrics_rs).read()
    types = dict(re.findall(r"pub (\w+): ([\w<>, ]+),", src))
    exported = set()
    for m in re.finditer(r'register(_with_unit)?\(\s*"(\w+)",\s*"[^"]*",\s*(?:prometheus_client::registry::Unit::(\w+),\s*)?m\.(\w+)\.clone\(\)', src, re.S):
        _, name, unit, field = m.groups()
        name = "pbft_" + name + (("_" + unit.lower()) if unit else "")
        t = types.get(field, "")
        if "Counter" in t: exported.add(name + "_total")
        elif "Histogram" in t: exported |= {name + s for s in ("_bucket", "_sum", "_count")}
        else: exported.add(name)
    if len(exported) < 15: err(f"parsed only {len(exported)} metrics from {metrics_rs}: parser out of date?")
    used = set()
    for f in files:
        used |= set(re.findall(r"\bpbft_[a-z_]+\b", open(f).read()))
    used = {u for u in used if not u.startswith("pbft_operator_") and u not in ("pbft_cluster", "pbft_member")}
    for u in sorted(used - exported): err(f"{u} is not exported by the replica")
    print(f"{len(used)} replica metrics used, all among the {len(exported)} exported")

def schema_check(value, schema, path, root):
    """A subset of OpenAPI v3 as the apiserver applies it to CRs: type,
    properties (unknown fields = error, like --validate=strict), required,
    enum, bounds, lengths, pattern, items, additionalProperties."""
    if schema.get("x-kubernetes-preserve-unknown-fields"): return
    if value is None:
        if not schema.get("nullable"): err(f"{path}: null")
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool): err(f"{path}: int or string expected")
        return
    t = schema.get("type")
    ok = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
          "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    if t and not ok[t](value): err(f"{path}: {type(value).__name__} where {t} expected"); return
    if "enum" in schema and value not in schema["enum"]: err(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]: err(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]: err(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]: err(f"{path}: longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]: err(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value): err(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties")
        for r in schema.get("required", []):
            if r not in value: err(f"{path}.{r}: required")
        for k, v in value.items():
            if props is not None and k in props: schema_check(v, props[k], f"{path}.{k}", root)
            elif isinstance(schema.get("additionalProperties"), dict): schema_check(v, schema["additionalProperties"], f"{path}.{k}", root)
            elif props is not None or schema.get("additionalProperties") is False: err(f"{path}: unknown field {k!r}")
    if isinstance(value, list):
        for i, v in enumerate(value): schema_check(v, schema.get("items", {}), f"{path}[{i}]", root)

def example(path, crd_path):
    crd = docs(crd_path)[0]
    objs = docs(path)
    if not objs: err("no object")
    for o in objs:
        if o.get("apiVersion") != f"{crd['spec']['group']}/v1alpha1" or o.get("kind") != crd["spec"]["names"]["kind"]:
            err(f"not a ConsensusCluster: {o.get('apiVersion')} {o.get('kind')}"); continue
        name = o.get("metadata", {}).get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 50: err(f"metadata.name {name!r} (DNS label, <= 50 characters)")
        if set(o) - {"apiVersion", "kind", "metadata", "spec"}: err(f"top-level fields {set(o)}")
        if "namespace" in o["metadata"]: err("metadata.namespace set: examples apply to any namespace")
        v = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"][0]
        spec_schema = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
        schema_check(o.get("spec"), spec_schema, "spec", spec_schema)
        f = (o.get("spec") or {}).get("faultTolerance")
        if isinstance(f, int) and not 1 <= f <= 7: err(f"spec.faultTolerance {f}: the CRD's CEL rule wants 1..7")
        if isinstance(f, int): print(f"{name}: f={f}, {3 * f + 1} replicas")

def dashboard(json_path, render_path):
    d = json.load(open(json_path))
    if not d.get("panels"): err("no panels")
    cms = [o for o in docs(render_path) if o.get("kind") == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    if len(cms) != 1: err(f"{len(cms)} dashboard ConfigMaps"); return
    if json.loads(cms[0]["data"]["pbft.json"]) != d: err("the ConfigMap's JSON differs from files/dashboards/pbft.json")
    print(f"{len(d['panels'])} panels")

def podify(path, ns):
    """The Deployment's pod template as a Pod (for a Pod Security admission dry-run)."""
    d = [o for o in docs(path) if o.get("kind") == "Deployment"][0]
    t = d["spec"]["template"]
    print(json.dumps({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "pbft-operator-psa-check", "namespace": ns, "labels": t["metadata"]["labels"]},
                      "spec": t["spec"]}))

def hook_script(path, outdir):
    """Writes each shell script of the helm test Pods to OUTDIR/<pod>-<container>.sh; prints the paths."""
    n = 0
    for pod in (o for o in docs(path) if o.get("kind") == "Pod"):
        spec = pod["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c.get("command", [])[:2] == ["/bin/sh", "-c"]:
                out = os.path.join(outdir, f"{pod['metadata']['name']}-{c['name']}.sh")
                with open(out, "w") as f:
                    f.write(c["args"][0])
                print(out)
                n += 1
    if n == 0:
        raise SystemExit("no shell script in the helm test Pods")

def kinds(path):
    print(" ".join(sorted({o["kind"] for o in docs(path)})))

def rules(path, out):
    groups = [o for o in docs(path) if o.get("kind") == "PrometheusRule"][0]["spec"]
    yaml.safe_dump(groups, open(out, "w"))
    print(sum(len(g["rules"]) for g in groups["groups"]), "alerts")

fn = globals()[sys.argv[1]]
try:
    fn(*sys.argv[2:])
except Exception as e:
    err(f"{type(e).__name__}: {e}")
for e in errors: print("ERROR:", e)
sys.exit(1 if errors else 0)
PYEOF
pycheck() { "$PY" -c "$PYCHECK" "$@"; }

CRD_SRC="$ROOT/crds/consensuscluster.yaml"
CRD_COPY="$CHART/files/crds/consensuscluster.yaml"
MON_APIS=(--api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PodMonitor
  --api-versions monitoring.coreos.com/v1/PrometheusRule)

# Value sets: name|values file (or -)|expectations for check_render.
SETS=(
  "default|-|{\"leader\":true,\"watch\":\"\",\"crd\":true,\"keep\":true}"
  "all-features|$CHART/ci/all-features-values.yaml|{\"leader\":true,\"watch\":\"\",\"crd\":true,\"keep\":true}"
  "watch-namespace|$CHART/ci/watch-namespace-values.yaml|{\"leader\":true,\"watch\":\"pbft-apps\",\"crd\":true,\"keep\":true}"
  "minimal|$CHART/ci/minimal-values.yaml|{\"leader\":false,\"watch\":\"\",\"crd\":false,\"keep\":true}"
  "fault-injection|$CHART/ci/fault-injection-values.yaml|{\"leader\":true,\"watch\":\"\",\"crd\":true,\"keep\":true,\"faults\":true}"
)
values_args() { [[ "$1" == - ]] || printf -- '-f\n%s\n' "$1"; }

echo "== offline checks"

# crd-sync
if cmp -s "$CRD_SRC" "$CRD_COPY"; then pass crd-sync
else
  fail crd-sync "charts/pbft-operator/files/crds/consensuscluster.yaml differs from crds/consensuscluster.yaml"
  diff -u "$CRD_SRC" "$CRD_COPY" | head -40 | indent
  echo "      fix: cp crds/consensuscluster.yaml charts/pbft-operator/files/crds/consensuscluster.yaml"
fi

# lint and render, per value set
for s in "${SETS[@]}"; do
  IFS='|' read -r name vf expect <<<"$s"
  mapfile -t va < <(values_args "$vf")
  if out=$("$HELM" lint --strict "$CHART" "${va[@]}" 2>&1); then pass "lint/$name"
  else fail "lint/$name" "helm lint --strict failed"; echo "$out" | indent; fi
  r="$WORK/render-$name.yaml"
  if ! "$HELM" template pbft-operator "$CHART" --namespace pbft-system "${va[@]}" "${MON_APIS[@]}" >"$r" 2>"$WORK/err"; then
    fail "render/$name" "helm template failed"; indent <"$WORK/err"; continue
  fi
  if out=$(pycheck check_render "$r" "$CRD_SRC" "$expect" 2>&1); then pass "render/$name ($out)"
  else fail "render/$name" "render checks"; echo "$out" | indent; fi
done

# schema: bad values are refused (by values.schema.json, before any template runs)
bad_case() {  # name, yaml
  local name=$1 f="$WORK/bad-$1.yaml"
  printf '%s\n' "$2" >"$f"
  if out=$("$HELM" template t "$CHART" -f "$f" 2>&1); then fail "schema/$name" "accepted: $2"
  elif grep -q "values don't meet the specifications of the schema" <<<"$out"; then pass "schema/$name ($(grep -m1 -- "- at" <<<"$out" | sed 's/^ *//'))"
  else fail "schema/$name" "refused, but not by the schema"; echo "$out" | indent; fi
}
bad_case replicaCount-string 'replicaCount: "two"'
bad_case unknown-top-level-key 'replicas: 3'
bad_case unknown-nested-key $'image:\n  repository: pbft-operator\n  digest: sha256:0'
bad_case logFormat-enum 'logFormat: xml'
bad_case pullPolicy-enum $'image:\n  repository: pbft-operator\n  pullPolicy: Sometimes'
bad_case watchNamespace-not-dns 'watchNamespace: Not_A_Namespace'
bad_case viewChangeWindow-duration $'metrics:\n  prometheusRule:\n    viewChangeWindow: ten minutes'
bad_case faultInjection-not-bool $'faultInjection:\n  enabled: "yes"'

# guard: values the schema allows but the templates refuse
if out=$("$HELM" template t "$CHART" --set replicaCount=2 --set leaderElection.enabled=false 2>&1); then
  fail guard/two-pods-without-leader-election "rendered"
elif grep -q "needs leaderElection.enabled=true" <<<"$out"; then pass guard/two-pods-without-leader-election
else fail guard/two-pods-without-leader-election "failed for another reason"; echo "$out" | indent; fi

# monitoring objects only when the cluster serves their API
r="$WORK/gate.yaml"
"$HELM" template t "$CHART" -f "$CHART/ci/all-features-values.yaml" >"$r" 2>"$WORK/err" || true
k_without=$(pycheck kinds "$r" 2>&1)
k_with=$(pycheck kinds "$WORK/render-all-features.yaml" 2>&1)
if grep -qE 'ServiceMonitor|PodMonitor|PrometheusRule' <<<"$k_without"; then fail monitoring-gate "rendered without the API: $k_without"
elif [[ $(grep -oE 'ServiceMonitor|PodMonitor|PrometheusRule' <<<"$k_with" | wc -l) -ne 3 ]]; then fail monitoring-gate "not rendered with the API: $k_with"
else pass monitoring-gate; fi

# metric names of the alerts and the dashboard
if pycheck rules "$WORK/render-all-features.yaml" "$WORK/rules.yaml" >"$WORK/rules.out" 2>&1 &&
   out=$(pycheck metric_names "$ROOT/replica/src/server/metrics.rs" "$WORK/rules.yaml" "$CHART/files/dashboards/pbft.json" 2>&1); then
  pass "metric-names ($(cat "$WORK/rules.out"); $out)"
else fail metric-names "unknown replica metrics"; { cat "$WORK/rules.out"; echo "${out:-}"; } | indent; fi

# dashboard
if out=$(pycheck dashboard "$CHART/files/dashboards/pbft.json" "$WORK/render-all-features.yaml" 2>&1); then pass "dashboard ($out)"
else fail dashboard "dashboard JSON"; echo "$out" | indent; fi

# promtool, when available
if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check rules "$WORK/rules.yaml" 2>&1); then pass promtool; else fail promtool "promtool check rules"; echo "$out" | indent; fi
else skip promtool "promtool not on PATH (PromQL syntax not checked offline)"; fi

# Lint the helm test's script (busybox sh) with shellcheck, when installed
if command -v shellcheck >/dev/null 2>&1; then
  mkdir -p "$WORK/hooks"
  if pycheck hook_script "$WORK/render-default.yaml" "$WORK/hooks" >"$WORK/hooks.list" 2>&1 &&
     mapfile -t hooks <"$WORK/hooks.list" &&
     out=$(shellcheck -s sh -e SC2020 "${hooks[@]}" 2>&1); then pass "sh-lint/test-hook (${#hooks[@]} scripts)"
  else fail sh-lint/test-hook "the helm test scripts"; { cat "$WORK/hooks.list"; echo "${out:-}"; } | indent; fi
else skip sh-lint/test-hook "shellcheck not on PATH"; fi

# drift of the plain manifest
if render_plain >"$WORK/plain.yaml" 2>"$WORK/err"; then
  if cmp -s "$WORK/plain.yaml" "$ROOT/deploy/pbft-operator.yaml"; then pass "drift (deploy/pbft-operator.yaml is current)"
  else
    fail drift "deploy/pbft-operator.yaml differs from a fresh render of the chart"
    diff -u "$ROOT/deploy/pbft-operator.yaml" "$WORK/plain.yaml" | head -60 | indent
    echo "      regenerate: scripts/render-manifests.sh"
  fi
  if out=$(pycheck check_render "$WORK/plain.yaml" "$CRD_SRC" '{"leader":true,"watch":"","crd":true,"keep":true}' 2>&1) &&
     grep -q 'Namespace=1' <<<"$out"; then pass "plain-manifest ($out)"
  else fail plain-manifest "checks of deploy/pbft-operator.yaml"; echo "$out" | indent; fi
else fail drift "render failed"; indent <"$WORK/err"; fi

# examples
shopt -s nullglob
examples=("$ROOT"/examples/*.yaml)
[[ ${#examples[@]} -gt 0 ]] || fail examples "no examples/*.yaml"
for e in "${examples[@]}"; do
  if out=$(pycheck example "$e" "$CRD_SRC" 2>&1); then pass "examples/${e##*/} ($out)"
  else fail "examples/${e##*/}" "invalid against the CRD schema"; echo "$out" | indent; fi
done
for want in small-f1.yaml ledger-f2.yaml; do
  [[ -f "$ROOT/examples/$want" ]] || fail "examples/$want" "missing"
done

# ---------------------------------------------------------------- cluster checks
echo "== cluster checks (kubectl apply --dry-run=server --validate=strict)"
KUBECTL_BIN="$(find_kubectl || true)"
if [[ -z "${KUBECONFIG:-}" ]]; then
  skip dry-run "KUBECONFIG not set"
elif [[ -z "$KUBECTL_BIN" ]]; then
  skip dry-run "kubectl not found (set KUBECTL)"
elif ! "$KUBECTL_BIN" get --raw /readyz >/dev/null 2>"$WORK/err"; then
  fail dry-run "KUBECONFIG=$KUBECONFIG set but the apiserver does not answer: $(head -c 300 "$WORK/err")"
else
  k() { "$KUBECTL_BIN" "$@"; }
  echo "apiserver: $(k version -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null)"
  NS="pbft-manifest-check-$$"
  k create namespace "$NS" >/dev/null && CLEANUP+=("'$KUBECTL_BIN' delete namespace '$NS' --wait=false >/dev/null")
  # Pod Security "restricted" enforced: the helm test Pod of each render is
  # admitted under it, and so must be the operator's pod (psa/operator-pod).
  k label namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
  # A dry-run creates nothing, so the helm test Pod's ServiceAccount (a hook
  # object in the same render) would not exist when the Pod is admitted.
  k create serviceaccount -n "$NS" pbft-operator-test --save-config >/dev/null
  CRD=consensusclusters.consensus.pbft.dev
  if ! k get crd "$CRD" >/dev/null 2>&1; then
    # Server dry-runs of ConsensusClusters need the CRD to exist.
    k apply --server-side -f "$CRD_SRC" >/dev/null && CLEANUP+=("'$KUBECTL_BIN' delete crd '$CRD' >/dev/null")
    "$ROOT/scripts/wait-crd-established.sh" "$KUBECTL_BIN" "$CRD"
    echo "installed the CRD for the dry-runs (removed at the end)"
  fi
  if ! k get namespace pbft-system >/dev/null 2>&1; then
    # The plain manifest's namespaced objects need pbft-system to exist (a
    # dry-run of its Namespace object does not create it). Removed at the
    # end, waiting, so that a next run does not find it terminating.
    k create namespace pbft-system >/dev/null &&
      CLEANUP+=("'$KUBECTL_BIN' delete namespace pbft-system --timeout=120s >/dev/null")
  elif [[ $(k get namespace pbft-system -o jsonpath='{.status.phase}') == Terminating ]]; then
    echo "namespace pbft-system is being deleted: dry-run/deploy will be refused"
  fi
  served=()
  for kind in ServiceMonitor PodMonitor PrometheusRule; do
    if k api-resources --api-group=monitoring.coreos.com -o name 2>/dev/null | grep -qi "^${kind}s\."; then
      served+=(--api-versions "monitoring.coreos.com/v1/$kind")
    fi
  done
  if [[ ${#served[@]} -gt 0 ]]; then echo "monitoring.coreos.com served, dry-run too: $(printf '%s\n' "${served[@]}" | grep -v -- --api-versions | tr '\n' ' ')"
  else echo "monitoring.coreos.com is not served: ServiceMonitor/PodMonitor/PrometheusRule are not dry-run"; fi
  dry() {  # name, file, [namespace]
    local out
    if out=$(k apply --dry-run=server --validate=strict ${3:+-n "$3"} -f "$2" 2>"$WORK/dry.err"); then
      pass "dry-run/$1 ($(grep -c 'server dry run' <<<"$out") objects)"
    else fail "dry-run/$1" "apiserver refused"; grep -v '^Warning: .*last-applied-configuration' "$WORK/dry.err" | indent; fi
  }
  for s in "${SETS[@]}"; do
    IFS='|' read -r name vf _ <<<"$s"
    mapfile -t va < <(values_args "$vf")
    extra=()
    [[ $name == watch-namespace ]] && extra=(--set "watchNamespace=$NS")
    # createNamespace off: the throw-away namespace exists already.
    r="$WORK/cluster-$name.yaml"
    if "$HELM" template pbft-operator "$CHART" --namespace "$NS" "${va[@]}" "${extra[@]}" "${served[@]}" \
         --set createNamespace=false >"$r" 2>"$WORK/err"; then dry "$name" "$r"
    else fail "dry-run/$name" "helm template failed"; indent <"$WORK/err"; fi
  done
  dry deploy "$ROOT/deploy/pbft-operator.yaml"
  # A Deployment's pods are only checked when the ReplicaSet creates them:
  # admit its pod template as a Pod (its ServiceAccount must exist for that).
  k create serviceaccount -n "$NS" pbft-operator --save-config >/dev/null
  if pycheck podify "$WORK/cluster-all-features.yaml" "$NS" >"$WORK/pod.json" 2>&1 &&
     out=$(k create --dry-run=server -f "$WORK/pod.json" 2>&1); then pass "psa/operator-pod (restricted)"
  else fail psa/operator-pod "the operator's pod is refused under Pod Security restricted"; { cat "$WORK/pod.json"; echo "${out:-}"; } | indent; fi
  for e in "${examples[@]}"; do dry "examples/${e##*/}" "$e" "$NS"; done
fi

echo "== $PASSED passed, $FAILED failed, $SKIPPED skipped"
if [[ $FAILED -gt 0 ]]; then printf 'failed: %s\n' "${FAILS[*]}"; exit 1; fi
