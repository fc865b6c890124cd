{{/*
Named templates that put the AWS Marketplace entitlement gate into a seller's pod template.

Every template takes a dict: "gate" (your chart's gate values, wherever it keeps them) and "context"
(the root context, $). Values you leave out come from this chart's values.yaml. In a pod template:

  metadata.labels:       {{ include "entitlement-gate.podLabels" $args }}        (map entries)
  metadata.annotations:  {{ include "entitlement-gate.podAnnotations" $args }}   (map entries)
  initContainers:        {{ include "entitlement-gate.initContainers" $args }}   (list items)
  containers (after the app): {{ include "entitlement-gate.containers" $args }}  (list items)
  app env:               {{ include "entitlement-gate.appEnv" $args }}           (list items)
  app volumeMounts:      {{ include "entitlement-gate.appVolumeMounts" $args }}  (list items)
  volumes:               {{ include "entitlement-gate.volumes" $args }}          (list items)
  a template of its own: {{ include "entitlement-gate.publicKeyConfigMap" $args }} (a ConfigMap)
  ServiceAccount annotations: {{ include "entitlement-gate.serviceAccountAnnotations" (dict "roleArn" ...) }}
  conditionals:          {{ if include "entitlement-gate.enabled" $args }}

where $args is (dict "gate" .Values.entitlementGate "context" $). The container templates also take
"terminationGracePeriodSeconds" (the pod's; Kubernetes' default 30 when absent), checked against
the metering sidecar's shutdown grace. Each template renders nothing when the gate is off.
*/}}

{{/*
The library's defaults: this chart's values, which Helm hands the including chart under the
dependency's name (or alias); found by chart name so that an alias works too.
*/}}
{{- define "entitlement-gate.defaults" -}}
{{- $defaults := dict -}}
{{- range $name, $sub := (.Subcharts | default dict) -}}
{{- if eq $sub.Chart.Name "entitlement-gate" }}{{ $defaults = $sub.Values }}{{ end -}}
{{- end -}}
{{- if not $defaults }}{{ $defaults = index .Values "entitlement-gate" | default dict }}{{ end -}}
{{- if not (hasKey $defaults "securityContext") -}}
{{- fail "entitlement-gate: the library chart's defaults are missing; add entitlement-gate to Chart.yaml dependencies and run `helm dependency build`" -}}
{{- end -}}
{{- omit $defaults "global" | toYaml -}}
{{- end }}

{{/* The gate values merged over the defaults, as YAML. Takes (dict "gate" ... "context" $). */}}
{{- define "entitlement-gate.config" -}}
{{- $defaults := include "entitlement-gate.defaults" .context | fromYaml -}}
{{- $gate := deepCopy (.gate | default dict) -}}
{{- mergeOverwrite $defaults $gate | toYaml -}}
{{- end }}

{{/* "true" when the gate is on, else empty: for `if` in the including chart. */}}
{{- define "entitlement-gate.enabled" -}}
{{- if (include "entitlement-gate.config" . | fromYaml).enabled }}true{{ end -}}
{{- end }}

{{/* registry/repository:tag or registry/repository@digest; global.imageRegistry wins over registry. */}}
{{- define "entitlement-gate.image" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- $image := $gate.image -}}
{{- $global := .context.Values.global | default dict -}}
{{- $registry := $global.imageRegistry | default $image.registry -}}
{{- $repository := required "entitlementGate.image.repository is required: push the entitlement-gate image you built to your registry (for a listing, the ECR repository AWS Marketplace gave you) and set image.registry and image.repository" $image.repository -}}
{{- $name := ternary (printf "%s/%s" $registry $repository) $repository (ne (toString $registry) "") -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $name $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $name (required "entitlementGate.image.tag or image.digest is required" (toString $image.tag)) -}}
{{- end -}}
{{- end }}

{{/* Paths inside the pod. */}}
{{- define "entitlement-gate.handoffPath" -}}/var/run/entitlement-gate{{- end }}
{{- define "entitlement-gate.publicKeyDir" -}}/etc/entitlement-gate/public-key{{- end }}
{{- define "entitlement-gate.caBundleDir" -}}/etc/entitlement-gate/ca{{- end }}
{{- define "entitlement-gate.meterStatePath" -}}/var/lib/entitlement-gate/meter{{- end }}
{{- define "entitlement-gate.productLicensePath" -}}/var/run/secrets/product-license{{- end }}

{{/* The ConfigMap holding the public key: the existing one, or the chart's own. */}}
{{- define "entitlement-gate.publicKeyConfigMapName" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- $gate.existingPublicKeyConfigMap.name | default (printf "%s-entitlement-gate-key" .context.Release.Name | trunc 63 | trimSuffix "-") -}}
{{- end }}

{{/* "true" when a public key reaches the pod (a PEM value or an existing ConfigMap). */}}
{{- define "entitlement-gate.hasPublicKey" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if and $gate.enabled (or $gate.publicKey $gate.existingPublicKeyConfigMap.name) }}true{{ end -}}
{{- end }}

{{/*
Whether the metering sidecar runs as a native sidecar: restartPolicy Always in initContainers is on by
default from Kubernetes 1.29 (beta; GA in 1.33). Before that it is a regular container.
*/}}
{{- define "entitlement-gate.nativeSidecars" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- $mode := toString $gate.metering.nativeSidecar -}}
{{- if eq $mode "auto" -}}
{{- if semverCompare ">=1.29.0-0" .context.Capabilities.KubeVersion.Version }}true{{ end -}}
{{- else if eq $mode "true" }}true{{ end -}}
{{- end }}

{{/* The UID the gate containers run as: the mesh proxy's, when the mesh strategy asks for it. */}}
{{- define "entitlement-gate.securityContext" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- $security := $gate.securityContext | default dict -}}
{{- if and (ne $gate.mesh.type "none") (eq $gate.mesh.strategy "proxyUid") -}}
{{- $uid := $gate.mesh.proxyUid | default (ternary 1337 2102 (eq $gate.mesh.type "istio")) -}}
{{- $_ := set $security "runAsUser" (int $uid) -}}
{{- end -}}
{{- toYaml $security -}}
{{- end }}

{{/* Environment every gate container shares: logging, workload identity, extra env, CA bundle. */}}
{{- define "entitlement-gate.commonEnv" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if not $gate.license.enabled }}
- name: ENTITLEMENT_GATE_PRODUCT_CODE
  value: {{ required "entitlementGate.productCode is required when the gate is enabled" $gate.productCode | quote }}
{{- else if $gate.productCode }}
- name: ENTITLEMENT_GATE_PRODUCT_CODE
  value: {{ $gate.productCode | quote }}
{{- end }}
- name: ENTITLEMENT_GATE_LOG_FORMAT
  value: {{ $gate.logFormat | quote }}
# Binds the RegisterUsage nonce (and the meter's records) to this pod.
- name: ENTITLEMENT_GATE_WORKLOAD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
# A mesh's injector annotates the pod (empty when absent): an exit 7 and doctor then name the mesh.
- name: ENTITLEMENT_GATE_ISTIO_SIDECAR_STATUS
  valueFrom:
    fieldRef:
      fieldPath: metadata.annotations['sidecar.istio.io/status']
- name: ENTITLEMENT_GATE_LINKERD_PROXY_VERSION
  valueFrom:
    fieldRef:
      fieldPath: metadata.annotations['linkerd.io/proxy-version']
{{- if $gate.caBundle.existingConfigMap }}
- name: SSL_CERT_FILE
  value: {{ printf "%s/%s" (include "entitlement-gate.caBundleDir" .) $gate.caBundle.key | quote }}
- name: AWS_CA_BUNDLE
  value: {{ printf "%s/%s" (include "entitlement-gate.caBundleDir" .) $gate.caBundle.key | quote }}
{{- end }}
{{- with $gate.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* What every gate container shares besides its env: image, security, termination message. */}}
{{- define "entitlement-gate.containerBase" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
image: {{ include "entitlement-gate.image" . | quote }}
imagePullPolicy: {{ $gate.image.pullPolicy }}
securityContext:
  {{- include "entitlement-gate.securityContext" . | nindent 2 }}
terminationMessagePath: /dev/termination-log
terminationMessagePolicy: FallbackToLogsOnError
{{- end }}

{{- define "entitlement-gate.caBundleMount" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.caBundle.existingConfigMap }}
- name: entitlement-gate-ca
  mountPath: {{ include "entitlement-gate.caBundleDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
What `license check` and `license watch` share: the product ID, the entitlements, the handoff
directory (license.json), and outside AWS the buyer's license token and role. Never
AWS_WEB_IDENTITY_TOKEN_FILE: the SDK would send the license token to STS as a web identity token.
*/}}
{{- define "entitlement-gate.licenseEnv" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- $l := $gate.license -}}
{{- if not $gate.handoff.enabled -}}
{{- fail "entitlementGate.license needs handoff.enabled: license.json is how the check hands the license to the app and to the watch" -}}
{{- end -}}
- name: ENTITLEMENT_GATE_PRODUCT_ID
  value: {{ required "entitlementGate.license.productId is required when license is enabled" $l.productId | quote }}
- name: ENTITLEMENT_GATE_ENTITLEMENTS
  value: {{ required "entitlementGate.license.entitlements must name at least one entitlement when license is enabled" ($l.entitlements | join ",") | quote }}
- name: ENTITLEMENT_GATE_CHECKOUT_TYPE
  value: {{ $l.checkoutType | quote }}
- name: ENTITLEMENT_GATE_DEADLINE
  value: {{ $l.deadline | quote }}
- name: ENTITLEMENT_GATE_HANDOFF_DIR
  value: {{ include "entitlement-gate.handoffPath" . | quote }}
{{- if $l.anywhere.enabled }}
- name: AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE
  value: {{ printf "%s/license_token" (include "entitlement-gate.productLicensePath" .) | quote }}
- name: AWS_ROLE_ARN
  valueFrom:
    secretKeyRef:
      name: {{ $l.anywhere.secretName | quote }}
      key: iam_role
{{- with $l.anywhere.region }}
- name: ENTITLEMENT_GATE_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The buyer's license secret, read-only, when the gate runs outside AWS. */}}
{{- define "entitlement-gate.productLicenseMount" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if and $gate.license.enabled $gate.license.anywhere.enabled }}
- name: entitlement-gate-product-license
  mountPath: {{ include "entitlement-gate.productLicensePath" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The gate itself: `entitlement-gate check` (or `license check`) as the first init container. */}}
{{- define "entitlement-gate.gateContainer" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.license.enabled -}}
- name: entitlement-gate
  {{- include "entitlement-gate.containerBase" . | nindent 2 }}
  args: ["license", "check"]
  env:
    {{- include "entitlement-gate.commonEnv" . | trim | nindent 4 }}
    {{- include "entitlement-gate.licenseEnv" . | nindent 4 }}
  {{- with $gate.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $mounts := list (dict "name" "entitlement-gate-handoff" "mountPath" (include "entitlement-gate.handoffPath" .)) -}}
  {{- $mounts = concat $mounts (include "entitlement-gate.productLicenseMount" . | fromYamlArray) (include "entitlement-gate.caBundleMount" . | fromYamlArray) }}
  volumeMounts:
    {{- toYaml $mounts | nindent 4 }}
{{- else -}}
{{- if not (or $gate.lockedImage (include "entitlement-gate.hasPublicKey" .)) -}}
{{- fail "entitlementGate: an open gate image needs the product's public key (publicKey or existingPublicKeyConfigMap); with a locked image (embedded keys) set lockedImage: true" -}}
{{- end -}}
- name: entitlement-gate
  {{- include "entitlement-gate.containerBase" . | nindent 2 }}
  args: ["check"]
  env:
    {{- include "entitlement-gate.commonEnv" . | trim | nindent 4 }}
    - name: ENTITLEMENT_GATE_PUBLIC_KEY_VERSION
      value: {{ $gate.publicKeyVersion | toString | quote }}
    {{- if and (include "entitlement-gate.hasPublicKey" .) (not $gate.lockedImage) }}
    - name: ENTITLEMENT_GATE_PUBLIC_KEY_FILE
      value: {{ printf "%s/public-key.pem" (include "entitlement-gate.publicKeyDir" .) | quote }}
    {{- end }}
    - name: ENTITLEMENT_GATE_DEADLINE
      value: {{ $gate.deadline | quote }}
    {{- if $gate.handoff.enabled }}
    - name: ENTITLEMENT_GATE_HANDOFF_DIR
      value: {{ include "entitlement-gate.handoffPath" . | quote }}
    {{- end }}
  {{- with $gate.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $mounts := list -}}
  {{- $mounts = concat $mounts (include "entitlement-gate.caBundleMount" . | fromYamlArray) -}}
  {{- if $gate.handoff.enabled -}}
  {{- $mounts = append $mounts (dict "name" "entitlement-gate-handoff" "mountPath" (include "entitlement-gate.handoffPath" .)) -}}
  {{- end -}}
  {{- if and (include "entitlement-gate.hasPublicKey" .) (not $gate.lockedImage) -}}
  {{- $mounts = append $mounts (dict "name" "entitlement-gate-public-key" "mountPath" (include "entitlement-gate.publicKeyDir" .) "readOnly" true) -}}
  {{- end -}}
  {{- with $mounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end }}

{{/*
The sidecars the gate offers, as a YAML list of their specs (enabled ones only). Each becomes a
native sidecar or a regular container through "entitlement-gate.sidecar"; a new one (the License
Manager watch) is one more entry here with its name, args, env, mounts and volumes.
*/}}
{{- define "entitlement-gate.sidecarSpecs" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- $specs := list -}}
{{- if and $gate.enabled $gate.metering.enabled -}}
{{- $m := $gate.metering -}}
{{- $_ := required "entitlementGate.productCode is required for the metering sidecar (MeterUsage reports against it)" $gate.productCode -}}
{{- $dimensions := required "entitlementGate.metering.dimensions must name at least one pricing dimension when metering is enabled" ($m.dimensions | join ",") -}}
{{- $grace := int $m.shutdownGraceSeconds -}}
{{- $drain := 0 -}}
{{- if not (include "entitlement-gate.nativeSidecars" .) }}{{ $drain = int $m.drainSeconds }}{{ end -}}
{{- $podGrace := int (.terminationGracePeriodSeconds | default 30) -}}
{{- if ge (add $grace $drain) $podGrace -}}
{{- fail (printf "entitlementGate.metering.shutdownGraceSeconds (%d) plus drainSeconds for a regular container (%d) must be less than the pod's terminationGracePeriodSeconds (%d): the meter needs time for its final report before SIGKILL" $grace $drain $podGrace) -}}
{{- end -}}
{{- $listen := printf "127.0.0.1:%d" (int $m.port) -}}
{{- $health := list "/entitlement-gate" "health" "--url" (printf "http://%s/readyz" $listen) -}}
{{- $env := list
  (dict "name" "ENTITLEMENT_GATE_DIMENSIONS" "value" $dimensions)
  (dict "name" "ENTITLEMENT_GATE_METER_LISTEN" "value" $listen)
  (dict "name" "ENTITLEMENT_GATE_STATE_DIR" "value" (include "entitlement-gate.meterStatePath" .))
  (dict "name" "ENTITLEMENT_GATE_SEND_ZERO" "value" (toString $m.sendZero))
  (dict "name" "ENTITLEMENT_GATE_SHUTDOWN_GRACE" "value" (printf "%ds" $grace))
  (dict "name" "ENTITLEMENT_GATE_METER_DRAIN" "value" (printf "%ds" $drain))
  (dict "name" "ENTITLEMENT_GATE_FINAL_FRACTION" "value" $m.finalFraction)
  (dict "name" "ENTITLEMENT_GATE_METER_ID_WINDOW" "value" $m.idWindow)
  (dict "name" "ENTITLEMENT_GATE_METER_STATE_BUDGET" "value" (printf "%dMi" (int $m.state.budgetMi))) -}}
{{- $volume := dict "name" "entitlement-gate-meter-state" -}}
{{- if $m.state.existingClaim -}}
{{- $_ := set $volume "persistentVolumeClaim" (dict "claimName" $m.state.existingClaim) -}}
{{- else -}}
{{- /* Twice the budget: the sidecar refuses new reports at the budget, so the kubelet never evicts the pod for its state. */ -}}
{{- $_ := set $volume "emptyDir" (dict "sizeLimit" (printf "%dMi" (mul 2 (int $m.state.budgetMi)))) -}}
{{- end -}}
{{- $specs = append $specs (dict
  "name" "entitlement-gate-meter"
  "args" (list "meter")
  "env" $env
  "resources" $m.resources
  "volumeMounts" (list (dict "name" "entitlement-gate-meter-state" "mountPath" (include "entitlement-gate.meterStatePath" .)))
  "volumes" (list $volume)
  "appEnv" (list (dict "name" "ENTITLEMENT_GATE_METER_URL" "value" (printf "http://%s" $listen)))
  "startupProbe" (dict "exec" (dict "command" $health) "periodSeconds" 2 "timeoutSeconds" 5 "failureThreshold" 60)
  "readinessProbe" (dict "exec" (dict "command" $health) "periodSeconds" 10 "timeoutSeconds" 5 "failureThreshold" 3)) -}}
{{- end -}}
{{- if and $gate.enabled $gate.license.enabled $gate.license.watch.enabled -}}
{{- $w := $gate.license.watch -}}
{{- $grace := int $w.shutdownGraceSeconds -}}
{{- $podGrace := int (.terminationGracePeriodSeconds | default 30) -}}
{{- if ge $grace $podGrace -}}
{{- fail (printf "entitlementGate.license.watch.shutdownGraceSeconds (%d) must be less than the pod's terminationGracePeriodSeconds (%d): the watch needs time to check the seat in before SIGKILL, or the seat stays taken for up to an hour" $grace $podGrace) -}}
{{- end -}}
{{- $listen := printf "127.0.0.1:%d" (int $w.port) -}}
{{- $health := list "/entitlement-gate" "health" "--url" (printf "http://%s/readyz" $listen) -}}
{{- $live := list "/entitlement-gate" "health" "--url" (printf "http://%s/healthz" $listen) -}}
{{- $env := concat (include "entitlement-gate.licenseEnv" . | fromYamlArray) (list
  (dict "name" "ENTITLEMENT_GATE_LICENSE_LISTEN" "value" $listen)
  (dict "name" "ENTITLEMENT_GATE_LICENSE_INTERVAL" "value" $w.interval)
  (dict "name" "ENTITLEMENT_GATE_ON_LOSS" "value" $w.onLoss)
  (dict "name" "ENTITLEMENT_GATE_LOSS_GRACE" "value" $w.lossGrace)
  (dict "name" "ENTITLEMENT_GATE_SHUTDOWN_GRACE" "value" (printf "%ds" $grace))) -}}
{{- $mounts := concat (list (dict "name" "entitlement-gate-handoff" "mountPath" (include "entitlement-gate.handoffPath" .))) (include "entitlement-gate.productLicenseMount" . | fromYamlArray) -}}
{{- $specs = append $specs (dict
  "name" "entitlement-gate-license"
  "args" (list "license" "watch")
  "env" $env
  "resources" $w.resources
  "volumeMounts" $mounts
  "volumes" (list)
  "appEnv" (list (dict "name" "ENTITLEMENT_GATE_LICENSE_URL" "value" (printf "http://%s/v1/license" $listen)))
  "startupProbe" (dict "exec" (dict "command" $health) "periodSeconds" 2 "timeoutSeconds" 5 "failureThreshold" 60)
  "readinessProbe" (dict "exec" (dict "command" $health) "periodSeconds" 10 "timeoutSeconds" 5 "failureThreshold" 3)) -}}
{{- end -}}
{{- toYaml $specs -}}
{{- end }}

{{/*
One sidecar container. Takes the usual dict plus "spec" (an entry of "entitlement-gate.sidecarSpecs")
and "native". Probes run `entitlement-gate health` inside the container: the sidecar listens on the
pod's loopback, which the kubelet's httpGet probes (sent to the pod IP) cannot reach, and the
distroless image has no curl.
*/}}
{{- define "entitlement-gate.sidecar" -}}
{{- $spec := .spec -}}
- name: {{ $spec.name }}
  {{- include "entitlement-gate.containerBase" . | nindent 2 }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  args: {{ toJson $spec.args }}
  env:
    {{- include "entitlement-gate.commonEnv" . | trim | nindent 4 }}
    {{- toYaml $spec.env | nindent 4 }}
  {{- with $spec.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    {{- toYaml $spec.startupProbe | nindent 4 }}
  readinessProbe:
    {{- toYaml $spec.readinessProbe | nindent 4 }}
  volumeMounts:
    {{- toYaml (concat $spec.volumeMounts (include "entitlement-gate.caBundleMount" . | fromYamlArray)) | nindent 4 }}
{{- end }}

{{/* initContainers entries: the gate, then the native sidecars (which start only after it passed). */}}
{{- define "entitlement-gate.initContainers" -}}
{{- if include "entitlement-gate.enabled" . -}}
{{- $items := list (include "entitlement-gate.gateContainer" .) -}}
{{- if include "entitlement-gate.nativeSidecars" . -}}
{{- range $spec := include "entitlement-gate.sidecarSpecs" $ | fromYamlArray -}}
{{- $items = append $items (include "entitlement-gate.sidecar" (merge (dict "spec" $spec "native" true) $)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $items -}}
{{- end -}}
{{- end }}

{{/* containers entries: the sidecars, on clusters without native sidecars. */}}
{{- define "entitlement-gate.containers" -}}
{{- if not (include "entitlement-gate.nativeSidecars" .) -}}
{{- $items := list -}}
{{- range $spec := include "entitlement-gate.sidecarSpecs" . | fromYamlArray -}}
{{- $items = append $items (include "entitlement-gate.sidecar" (merge (dict "spec" $spec "native" false) $)) -}}
{{- end -}}
{{- join "\n" $items -}}
{{- end -}}
{{- end }}

{{/* The pod volumes: handoff, public key, CA bundle, sidecar state. */}}
{{- define "entitlement-gate.volumes" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.enabled -}}
{{- $volumes := list -}}
{{- if $gate.handoff.enabled -}}
{{- $volumes = append $volumes (dict "name" "entitlement-gate-handoff" "emptyDir" (dict "sizeLimit" "1Mi")) -}}
{{- end -}}
{{- if include "entitlement-gate.hasPublicKey" . -}}
{{- $key := "public-key.pem" -}}
{{- if $gate.existingPublicKeyConfigMap.name }}{{ $key = $gate.existingPublicKeyConfigMap.key }}{{ end -}}
{{- $items := list (dict "key" $key "path" "public-key.pem") -}}
{{- $volumes = append $volumes (dict "name" "entitlement-gate-public-key" "configMap" (dict "name" (include "entitlement-gate.publicKeyConfigMapName" .) "items" $items)) -}}
{{- end -}}
{{- if and $gate.license.enabled $gate.license.anywhere.enabled -}}
{{- $items := list (dict "key" "license_token" "path" "license_token") (dict "key" "iam_role" "path" "iam_role") -}}
{{- $volumes = append $volumes (dict "name" "entitlement-gate-product-license" "secret" (dict "secretName" $gate.license.anywhere.secretName "items" $items)) -}}
{{- end -}}
{{- if $gate.caBundle.existingConfigMap -}}
{{- $volumes = append $volumes (dict "name" "entitlement-gate-ca" "configMap" (dict "name" $gate.caBundle.existingConfigMap "items" (list (dict "key" $gate.caBundle.key "path" $gate.caBundle.key)))) -}}
{{- end -}}
{{- range $spec := include "entitlement-gate.sidecarSpecs" . | fromYamlArray -}}
{{- $volumes = concat $volumes $spec.volumes -}}
{{- end -}}
{{- with $volumes }}{{ toYaml . }}{{ end -}}
{{- end -}}
{{- end }}

{{/* The app container's read-only view of the handoff and the public key. */}}
{{- define "entitlement-gate.appVolumeMounts" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.enabled -}}
{{- $mounts := list -}}
{{- if $gate.handoff.enabled -}}
{{- $mounts = append $mounts (dict "name" "entitlement-gate-handoff" "mountPath" (include "entitlement-gate.handoffPath" .) "readOnly" true) -}}
{{- end -}}
{{- if include "entitlement-gate.hasPublicKey" . -}}
{{- $mounts = append $mounts (dict "name" "entitlement-gate-public-key" "mountPath" (include "entitlement-gate.publicKeyDir" .) "readOnly" true) -}}
{{- end -}}
{{- with $mounts }}{{ toYaml . }}{{ end -}}
{{- end -}}
{{- end }}

{{/*
What the app needs to re-check the entitlement itself (`entitlement-gate verify`, `doctor`, or the
library in-process as in examples/verify_handoff.rs), and to reach the sidecars. With a locked image
and no publicKey, the app has no key file: it verifies with a locked build of its own, whose keys
are embedded.
*/}}
{{- define "entitlement-gate.appEnv" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.enabled -}}
{{- if $gate.productCode }}
- name: ENTITLEMENT_GATE_PRODUCT_CODE
  value: {{ $gate.productCode | quote }}
- name: ENTITLEMENT_GATE_PUBLIC_KEY_VERSION
  value: {{ $gate.publicKeyVersion | toString | quote }}
{{- end }}
{{- if include "entitlement-gate.hasPublicKey" . }}
- name: ENTITLEMENT_GATE_PUBLIC_KEY_FILE
  value: {{ printf "%s/public-key.pem" (include "entitlement-gate.publicKeyDir" .) | quote }}
{{- end }}
{{- if $gate.handoff.enabled }}
- name: ENTITLEMENT_GATE_HANDOFF_DIR
  value: {{ include "entitlement-gate.handoffPath" . | quote }}
{{- end }}
- name: ENTITLEMENT_GATE_WORKLOAD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- range $spec := include "entitlement-gate.sidecarSpecs" . | fromYamlArray }}
{{ toYaml $spec.appEnv }}
{{- end }}
{{- end -}}
{{- end }}

{{/* Pod labels: the gate's podLabels (map entries). */}}
{{- define "entitlement-gate.podLabels" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if and $gate.enabled $gate.podLabels }}{{ toYaml $gate.podLabels }}{{ end -}}
{{- end }}

{{/* Pod annotations: what the mesh strategy needs, then the gate's podAnnotations (which win). */}}
{{- define "entitlement-gate.podAnnotations" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if $gate.enabled -}}
{{- $annotations := dict -}}
{{- $mesh := $gate.mesh -}}
{{- if eq $mesh.strategy "excludePorts" -}}
{{- if eq $mesh.type "istio" }}{{ $_ := set $annotations "traffic.sidecar.istio.io/excludeOutboundPorts" (toString $mesh.excludeOutboundPorts) }}{{ end -}}
{{- if eq $mesh.type "linkerd" }}{{ $_ := set $annotations "config.linkerd.io/skip-outbound-ports" (toString $mesh.excludeOutboundPorts) }}{{ end -}}
{{- else if eq $mesh.strategy "nativeSidecar" -}}
{{- if and (ne $mesh.type "none") (not (semverCompare ">=1.29.0-0" .context.Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "entitlementGate.mesh.strategy nativeSidecar needs Kubernetes 1.29 or newer (this cluster: %s); use proxyUid" .context.Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if eq $mesh.type "istio" }}{{ $_ := set $annotations "sidecar.istio.io/nativeSidecar" "true" }}{{ end -}}
{{- if eq $mesh.type "linkerd" }}{{ $_ := set $annotations "config.beta.linkerd.io/proxy-enable-native-sidecar" "true" }}{{ end -}}
{{- end -}}
{{- $annotations = merge (deepCopy ($gate.podAnnotations | default dict)) $annotations -}}
{{- with $annotations }}{{ toYaml . }}{{ end -}}
{{- end -}}
{{- end }}

{{/* The ConfigMap with the PEM public key, when publicKey is set (not with an existing ConfigMap). */}}
{{- define "entitlement-gate.publicKeyConfigMap" -}}
{{- $gate := include "entitlement-gate.config" . | fromYaml -}}
{{- if and $gate.enabled $gate.publicKey (not $gate.existingPublicKeyConfigMap.name) -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "entitlement-gate.publicKeyConfigMapName" . }}
  labels:
    app.kubernetes.io/name: {{ .context.Chart.Name }}
    app.kubernetes.io/instance: {{ .context.Release.Name }}
    app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
    app.kubernetes.io/managed-by: {{ .context.Release.Service }}
    app.kubernetes.io/component: entitlement-gate
    helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
data:
  public-key.pem: |
    {{- $gate.publicKey | trim | nindent 4 }}
{{- end }}
{{- end }}

{{/*
The IRSA annotation for the service account whose role may call RegisterUsage (and MeterUsage).
Takes (dict "roleArn" "arn:aws:iam::111122223333:role/...").
*/}}
{{- define "entitlement-gate.serviceAccountAnnotations" -}}
{{- with .roleArn -}}
eks.amazonaws.com/role-arn: {{ . | quote }}
{{- end }}
{{- end }}
