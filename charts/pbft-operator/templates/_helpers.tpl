{{/*
Full name of the release's objects: fullnameOverride, else the release name
when it already contains the chart name, else "<release>-pbft-operator".
Truncated to 63 characters (DNS label).
*/}}
{{- define "pbft-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pbft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels. `app.kubernetes.io/name: pbft-operator` is fixed on purpose:
a ConsensusCluster's NetworkPolicy admits its replicas' admin port from pods
with this label (operator/src/build/network_policy.rs).
*/}}
{{- define "pbft-operator.selectorLabels" -}}
app.kubernetes.io/name: pbft-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pbft-operator.labels" -}}
{{ include "pbft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pbft
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "pbft-operator.chart" . }}
{{- end -}}

{{/*
Labels of the helm test's objects: another name, so that neither the metrics
Service, the operator's NetworkPolicy nor a replica NetworkPolicy (which
admits the admin port from app.kubernetes.io/name: pbft-operator) select the
test pod.
*/}}
{{- define "pbft-operator.testLabels" -}}
app.kubernetes.io/name: pbft-operator-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pbft
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "pbft-operator.chart" . }}
{{- end -}}

{{- define "pbft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pbft-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pbft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pbft-operator.replicaImage" -}}
{{- printf "%s:%s" .Values.replicaImage.repository (default .Chart.AppVersion .Values.replicaImage.tag) -}}
{{- end -}}

{{- define "pbft-operator.faultInjectionImage" -}}
{{- printf "%s:%s" .Values.faultInjection.image.repository (default .Chart.AppVersion .Values.faultInjection.image.tag) -}}
{{- end -}}

{{/* Image of the helm test's pbftctl pod: test.clientImage, else the test cluster's replica image. */}}
{{- define "pbft-operator.testClientImage" -}}
{{- .Values.test.clientImage | default .Values.test.clusterImage | default (include "pbft-operator.replicaImage" .) -}}
{{- end -}}

{{/* Namespace of the helm test's ConsensusCluster. */}}
{{- define "pbft-operator.testNamespace" -}}
{{- .Values.test.namespace | default .Values.watchNamespace | default .Release.Namespace -}}
{{- end -}}

{{/*
The operator's permissions on the objects of ConsensusClusters, shared by the
ClusterRole (all namespaces) and the Role (watchNamespace). Why each verb:
charts/pbft-operator/README.md, "RBAC".
*/}}
{{- define "pbft-operator.clusterRules" -}}
- apiGroups: [consensus.pbft.dev]
  resources: [consensusclusters]
  verbs: [get, list, watch, patch, update]
- apiGroups: [consensus.pbft.dev]
  resources: [consensusclusters/status]
  verbs: [get, patch, update]
- apiGroups: [consensus.pbft.dev]
  resources: [consensusclusters/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods, persistentvolumeclaims, services, configmaps, serviceaccounts, secrets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
