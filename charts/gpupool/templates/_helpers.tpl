{{/* Chart name. */}}
{{- define "gpupool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full prefix of every resource name: the release name when it contains the chart name. */}}
{{- define "gpupool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gpupool.controller" -}}{{ include "gpupool.fullname" . }}-controller{{- end }}
{{- define "gpupool.scheduler" -}}{{ include "gpupool.fullname" . }}-scheduler{{- end }}
{{/* The enforcement backend in effect: "auto" is mps on real GPU nodes, none with the fake inventory
(README "What is enforced, per backend"). */}}
{{- define "gpupool.backend" -}}
{{- $b := .Values.enforcement.backend -}}
{{- if eq $b "auto" -}}{{ ternary "none" "mps" .Values.fakeInventory.enabled }}{{- else -}}{{ $b }}{{- end -}}
{{- end }}
{{- define "gpupool.deviceplugin" -}}{{ include "gpupool.fullname" . }}-deviceplugin{{- end }}
{{- define "gpupool.webhookService" -}}{{ include "gpupool.fullname" . }}-webhook{{- end }}
{{- define "gpupool.webhookSecret" -}}{{ include "gpupool.fullname" . }}-webhook-tls{{- end }}

{{/* The Secret holding the assignment signing key (data key "key"). */}}
{{- define "gpupool.signingSecret" -}}
{{- default (printf "%s-signing-key" (include "gpupool.fullname" .)) .Values.signingKey.existingSecret }}
{{- end }}

{{/* Common labels; pass (dict "ctx" $ "component" "controller"). */}}
{{- define "gpupool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: gpupool
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "gpupool.selectorLabels" . }}
{{- end }}

{{- define "gpupool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpupool.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* The gpupool image (one image for the three components). */}}
{{- define "gpupool.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Stock kube-scheduler image: the tag defaults to the cluster's version without vendor suffixes
     (v1.30.5-gke.1014001 -> v1.30.5, v1.29.3+k3s1 -> v1.29.3). */}}
{{- define "gpupool.schedulerImage" -}}
{{- $tag := .Values.scheduler.image.tag }}
{{- if not $tag }}
{{- $tag = regexFind "^v[0-9]+\\.[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version }}
{{- end }}
{{- if not $tag }}
{{- fail (printf "cannot derive the kube-scheduler tag from the cluster version %q; set scheduler.image.tag" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- printf "%s:%s" .Values.scheduler.image.repository $tag }}
{{- end }}

{{- define "gpupool.validate" -}}
{{- if not (has .Values.enforcement.backend (list "auto" "pool" "mps" "hami-core" "none")) }}
{{- fail (printf "enforcement.backend must be auto, pool, mps, hami-core or none (got %q)" .Values.enforcement.backend) }}
{{- end }}
{{- if lt (int .Values.slotsPerGPU) 1 }}
{{- fail "slotsPerGPU must be >= 1" }}
{{- end }}
{{- if lt (int .Values.remoteSlots) 0 }}
{{- fail "remoteSlots must be >= 0" }}
{{- end }}
{{- if or (lt (int .Values.overcommit.computePercent) 100) (lt (int .Values.overcommit.memoryPercent) 100) }}
{{- fail "overcommit.computePercent and overcommit.memoryPercent must be >= 100" }}
{{- end }}
{{- end }}

{{/* The service account names of gpupool's own components (excluded from the webhooks). */}}
{{- define "gpupool.serviceAccountUsers" -}}
{{- $ns := .Release.Namespace }}
{{- list (printf "system:serviceaccount:%s:%s" $ns (include "gpupool.controller" .)) (printf "system:serviceaccount:%s:%s" $ns (include "gpupool.scheduler" .)) (printf "system:serviceaccount:%s:%s" $ns (include "gpupool.deviceplugin" .)) | toJson }}
{{- end }}

{{/* The pool settings (gpupool/config.py PoolSettings), set once for the extender and the controller. */}}
{{- define "gpupool.poolEnv" -}}
- name: GPUPOOL_DEFAULT_POLICY
  value: {{ .Values.placement.defaultPolicy | quote }}
{{- with .Values.placement.policies }}
- name: GPUPOOL_POLICIES
  value: {{ toJson . | quote }}
{{- end }}
- name: GPUPOOL_OVERCOMMIT_COMPUTE_PERCENT
  value: {{ .Values.overcommit.computePercent | quote }}
- name: GPUPOOL_OVERCOMMIT_MEMORY_PERCENT
  value: {{ .Values.overcommit.memoryPercent | quote }}
{{- range $k, $v := .Values.placement.extraEnv }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{/* Env shared by the extender, the controller and the node agent (must agree). */}}
{{- define "gpupool.sharedEnv" -}}
- name: GPUPOOL_SLOTS_PER_GPU
  value: {{ .Values.slotsPerGPU | quote }}
- name: GPUPOOL_REMOTE_SLOTS
  value: {{ .Values.remoteSlots | quote }}
- name: GPUPOOL_SIGNING_KEY_FILE
  value: /etc/gpupool/signing
- name: GPUPOOL_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{- define "gpupool.signingVolume" -}}
- name: signing-key
  secret:
    secretName: {{ include "gpupool.signingSecret" . }}
    defaultMode: 0440
    # every entry (`key`, `key.<id>`, `signing-kid`), no subPath: the kubelet updates the files when the
    # Secret changes and gpupool re-reads them (key rotation, README "Rotating the signing key")
{{- end }}

{{- define "gpupool.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}
