{{- define "example.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "example.serviceAccountName" -}}
{{- default (include "example.fullname" .) .Values.serviceAccount.name -}}
{{- end }}

{{- define "example.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
