{{/* Chart name. */}}
{{- define "keysmith.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: prefix of every object. */}}
{{- define "keysmith.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keysmith.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "keysmith.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keysmith.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "keysmith.labels" -}}
helm.sh/chart: {{ include "keysmith.chart" . }}
{{ include "keysmith.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: keysmith
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "keysmith.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keysmith.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "keysmith.leaseName" -}}
{{- default (printf "%s-leader" (include "keysmith.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "keysmith.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) in namespace mode. */}}
{{- define "keysmith.namespaceMode" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the cluster-scoped ClusterKeyProvider permissions are granted. */}}
{{- define "keysmith.clusterProviders" -}}
{{- if or (not .Values.watchNamespaces) .Values.clusterProviders.enabled }}true{{ end }}
{{- end }}

{{/*
Rules for the namespaced resources the controller reconciles: granted cluster-wide by a
ClusterRole in cluster mode, or by a Role in each watched namespace in namespace mode.
*/}}
{{- define "keysmith.namespacedRules" -}}
- apiGroups: ["keysmith.dev"]
  resources: ["apikeys"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["keysmith.dev"]
  resources: ["apikeys/status"]
  verbs: ["patch"]
- apiGroups: ["keysmith.dev"]
  resources: ["apikeys/finalizers"]
  verbs: ["update"]
- apiGroups: ["keysmith.dev"]
  resources: ["keyproviders"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["keysmith.dev"]
  resources: ["keyproviders/status"]
  verbs: ["patch"]
- apiGroups: ["keysmith.dev"]
  resources: ["keybudgets"]
  verbs: ["list"]
- apiGroups: ["keysmith.dev"]
  resources: ["keybudgets/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if and .Values.rolloutRestart.enabled (not .Values.rolloutRestart.namespaces) }}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
{{- end }}

{{/* Rules for ClusterKeyProviders: always cluster-scoped. */}}
{{- define "keysmith.clusterRules" -}}
- apiGroups: ["keysmith.dev"]
  resources: ["clusterkeyproviders"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["keysmith.dev"]
  resources: ["clusterkeyproviders/status"]
  verbs: ["patch"]
- apiGroups: ["keysmith.dev"]
  resources: ["clusterkeybudgets"]
  verbs: ["list"]
- apiGroups: ["keysmith.dev"]
  resources: ["clusterkeybudgets/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Checks on value combinations the schema cannot express. */}}
{{- define "keysmith.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile the same ApiKeys" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.service.enabled=true" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.restrict (not .Values.networkPolicy.egress.kubeAPIServer.cidrs) }}
{{- fail "networkPolicy.egress.restrict needs networkPolicy.egress.kubeAPIServer.cidrs (the API server endpoint addresses: kubectl get endpoints kubernetes -n default)" }}
{{- end }}
{{- if ne (len .Values.rolloutRestart.namespaces) (len (uniq .Values.rolloutRestart.namespaces)) }}
{{- fail "rolloutRestart.namespaces lists a namespace twice" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- end }}
