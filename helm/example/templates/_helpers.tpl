{{- define "example.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "example.serviceAccountName" -}}
{{- default (include "example.fullname" .) .Values.serviceAccount.name -}}
{{- end }}

{{/* The labels a Deployment selects on: immutable, so only name and instance. */}}
{{- define "example.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Kubernetes' recommended labels, on every object and pod. */}}
{{- define "example.labels" -}}
{{ include "example.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The app image, Bitnami style: registry/repository:tag or @digest; global.imageRegistry wins. */}}
{{- define "example.image" -}}
{{- $registry := (.Values.global | default dict).imageRegistry | default .Values.image.registry -}}
{{- $name := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne (toString $registry) "") -}}
{{- if .Values.image.digest }}{{ printf "%s@%s" $name .Values.image.digest }}{{ else }}{{ printf "%s:%s" $name (toString .Values.image.tag) }}{{ end -}}
{{- end }}

