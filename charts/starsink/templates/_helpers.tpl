{{/* The release's base name, at most 63 characters. */}}
{{- define "starsink.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "starsink.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "starsink.labels" -}}
{{ include "starsink.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "starsink.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "starsink.webhookService" -}}
{{- printf "%s-webhook" (include "starsink.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "starsink.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "starsink.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A duration as values.schema.json allows it (digits, then ms, s, m, h or d), in seconds. */}}
{{- define "starsink.seconds" -}}
{{- $per := dict "ms" 0.001 "s" 1 "m" 60 "h" 3600 "d" 86400 -}}
{{- mulf (regexFind "^[0-9]+" . | float64) (get $per (regexFind "[a-z]+$" .)) -}}
{{- end -}}
