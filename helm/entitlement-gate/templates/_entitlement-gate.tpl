{{/*
Named templates for the entitlement gate. Each takes the including chart's root context and reads
its `.Values.entitlementGate`; missing keys fall back to "entitlement-gate.defaults".

  initContainers:  {{ include "entitlement-gate.initContainer" . }}      (a list item)
  volumes:         {{ include "entitlement-gate.volume" . }}             (a list item, or nothing)
  app volumeMounts:{{ include "entitlement-gate.volumeMount" . }}        (a list item, or nothing)
  app env:         {{ include "entitlement-gate.appEnv" . }}             (a list item, or nothing)
  SA annotations:  {{ include "entitlement-gate.serviceAccountAnnotations" (dict "roleArn" ...) }}
  conditionals:    {{ if include "entitlement-gate.enabled" . }}
*/}}

{{- define "entitlement-gate.defaults" -}}
enabled: false
productCode: ""
publicKeyVersion: 1
publicKey: ""
image:
  repository: entitlement-gate
  tag: "0.1.0"
  pullPolicy: IfNotPresent
deadline: 120s
logFormat: text
resources:
  requests:
    cpu: 10m
    memory: 16Mi
  limits:
    memory: 64Mi
handoff:
  enabled: true
{{- end }}

{{/* The entitlementGate values merged over the defaults, as YAML. */}}
{{- define "entitlement-gate.config" -}}
{{- $defaults := include "entitlement-gate.defaults" . | fromYaml -}}
{{- $values := deepCopy (.Values.entitlementGate | default dict) -}}
{{- mergeOverwrite $defaults $values | toYaml -}}
{{- end }}

{{/* "true" when the gate is on, else empty: for `if` in the including chart. */}}
{{- define "entitlement-gate.enabled" -}}
{{- if (include "entitlement-gate.config" . | fromYaml).enabled }}true{{ end -}}
{{- end }}

{{/* Where the handoff volume is mounted, in the gate and (read-only) in the app. */}}
{{- define "entitlement-gate.handoffPath" -}}/var/run/entitlement-gate{{- end }}

{{- define "entitlement-gate.handoffEnabled" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if and $gate.enabled $gate.handoff.enabled }}true{{ end -}}
{{- end }}

{{/* The init container. Restricted Pod Security profile; failure reason in the termination log. */}}
{{- define "entitlement-gate.initContainer" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.enabled -}}
- name: entitlement-gate
  image: {{ printf "%s:%s" $gate.image.repository (toString $gate.image.tag) | quote }}
  imagePullPolicy: {{ $gate.image.pullPolicy }}
  args: ["check"]
  env:
    - name: ENTITLEMENT_GATE_PRODUCT_CODE
      value: {{ required "entitlementGate.productCode is required when the gate is enabled" $gate.productCode | quote }}
    - name: ENTITLEMENT_GATE_PUBLIC_KEY_VERSION
      value: {{ $gate.publicKeyVersion | toString | quote }}
    {{- with $gate.publicKey }}
    - name: ENTITLEMENT_GATE_PUBLIC_KEY
      value: {{ . | quote }}
    {{- end }}
    - name: ENTITLEMENT_GATE_DEADLINE
      value: {{ $gate.deadline | quote }}
    - name: ENTITLEMENT_GATE_LOG_FORMAT
      value: {{ $gate.logFormat | quote }}
    {{- if $gate.handoff.enabled }}
    - name: ENTITLEMENT_GATE_HANDOFF_DIR
      value: {{ include "entitlement-gate.handoffPath" . | quote }}
    {{- end }}
  {{- with $gate.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  terminationMessagePath: /dev/termination-log
  terminationMessagePolicy: FallbackToLogsOnError
  {{- if $gate.handoff.enabled }}
  volumeMounts:
    - name: entitlement-gate-handoff
      mountPath: {{ include "entitlement-gate.handoffPath" . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The pod volume that carries entitlement.json from the gate to the app. */}}
{{- define "entitlement-gate.volume" -}}
{{- if include "entitlement-gate.handoffEnabled" . -}}
- name: entitlement-gate-handoff
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- end }}

{{/* The app container's read-only view of the handoff. */}}
{{- define "entitlement-gate.volumeMount" -}}
{{- if include "entitlement-gate.handoffEnabled" . -}}
- name: entitlement-gate-handoff
  mountPath: {{ include "entitlement-gate.handoffPath" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Tells the app (and `entitlement-gate verify`) where the handoff is. */}}
{{- define "entitlement-gate.appEnv" -}}
{{- if include "entitlement-gate.handoffEnabled" . -}}
- name: ENTITLEMENT_GATE_HANDOFF_DIR
  value: {{ include "entitlement-gate.handoffPath" . | quote }}
{{- end }}
{{- end }}

{{/*
The IRSA annotation for the service account whose role may call RegisterUsage.
Takes (dict "roleArn" "arn:aws:iam::111122223333:role/...").
*/}}
{{- define "entitlement-gate.serviceAccountAnnotations" -}}
{{- with .roleArn -}}
eks.amazonaws.com/role-arn: {{ . | quote }}
{{- end }}
{{- end }}
