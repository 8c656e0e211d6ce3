{{/* Names and labels shared by every template. */}}

{{- define "stagingmerge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stagingmerge.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "stagingmerge.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "stagingmerge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "stagingmerge.labels" -}}
{{ include "stagingmerge.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "stagingmerge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stagingmerge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "stagingmerge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stagingmerge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stagingmerge.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "stagingmerge.mergeImage" -}}
{{ .Values.merge.image.repository }}:{{ .Values.merge.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Namespaces that get a merge ServiceAccount: the release's and every watched one. */}}
{{- define "stagingmerge.mergeNamespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- range .Values.watchNamespaces }}{{ $namespaces = append $namespaces . }}{{ end }}
{{- $namespaces | uniq | join "," }}
{{- end }}

{{/* What kopf itself needs on StagingMerges: watching them and patching its
     bookkeeping annotations (progress, last-handled-configuration). */}}
{{- define "stagingmerge.frameworkRules" -}}
- apiGroups: [stagingmerge.io]
  resources: [stagingmerges]
  verbs: [get, list, watch, patch]
{{- end }}

{{/* What the reconciler needs: status, Jobs, the Jobs' pods (termination messages), Events.
     No Secrets: merge Jobs reference them by name through envFrom. */}}
{{- define "stagingmerge.reconcilerRules" -}}
- apiGroups: [stagingmerge.io]
  resources: [stagingmerges]
  # delete: a finished StagingMerge whose spec.ttlSecondsAfterFinished has passed
  verbs: [get, list, watch, delete]
- apiGroups: [stagingmerge.io]
  resources: [stagingmerges/status]
  verbs: [patch]
# Jobs set blockOwnerDeletion on their ownerReference to the StagingMerge: with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default) that
# needs update on the owner's finalizers subresource.
- apiGroups: [stagingmerge.io]
  resources: [stagingmerges/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
