{{/* Names and labels shared by every manifest. */}}
{{- define "lightgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "lightgate.fullname" -}}
{{- if contains (include "lightgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "lightgate.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels for every object but engines' (which add their selector to commonLabels). */}}
{{- define "lightgate.labels" -}}
app.kubernetes.io/name: {{ include "lightgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "lightgate.commonLabels" . }}
{{- end -}}

{{- define "lightgate.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lightgate
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lightgate.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "lightgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* An engine's resource name: release, "engine", the model name made DNS-safe. */}}
{{- define "lightgate.engineName" -}}
{{- $root := index . 0 -}}{{- $engine := index . 1 -}}
{{- printf "%s-%s" (include "lightgate.fullname" $root) ($engine.name | lower | replace "." "-" | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lightgate.engineSelector" -}}
{{- $root := index . 0 -}}{{- $engine := index . 1 -}}
app.kubernetes.io/name: {{ include "lightgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: engine
lightgate.dev/model: {{ $engine.name | lower | replace "." "-" | replace "_" "-" | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{- define "lightgate.secretName" -}}
{{- default (printf "%s-keys" (include "lightgate.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "lightgate.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Non-empty when the gateway has tenants to mount: from this chart's Secret, or an existing one. */}}
{{- define "lightgate.tenants" -}}
{{- if or (and (not .Values.auth.existingSecret) .Values.auth.tenants) (and .Values.auth.existingSecret .Values.auth.tenantsInExistingSecret) -}}
true
{{- end -}}
{{- end }}
