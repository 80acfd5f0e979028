{{- define "tokensync.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokensync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tokensync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokensync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokensync.labels" -}}
{{ include "tokensync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The image: repository@digest when a digest is set, else repository:tag (default appVersion). */}}
{{- define "tokensync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The operator's own scrape target, for the absent and leader alerts. */}}
{{- define "tokensync.operatorSelector" -}}
{{- .Values.prometheusRule.operatorSelector | default (printf "job=%q, namespace=%q" (printf "%s-metrics" (include "tokensync.fullname" .)) .Release.Namespace) -}}
{{- end -}}

{{/* The rules the controller needs, exactly: shared by the ClusterRole and the namespaced Roles. */}}
{{- define "tokensync.rules" -}}
- apiGroups: ["tokensync.dev"]
  resources: ["providercredentials"]
  # watch them; patch adds and removes the revoke finalizer
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tokensync.dev"]
  resources: ["providercredentials/status"]
  verbs: ["patch"]
- apiGroups: ["tokensync.dev"]
  resources: ["providercredentials/finalizers"]
  # owner references with blockOwnerDeletion, where OwnerReferencesPermissionEnforcement is on
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  # read inputs and CA bundles, watch for changes, server-side apply output and state Secrets
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  # CA bundles
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
