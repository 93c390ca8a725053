{{/* Names, labels and images shared by the templates. */}}

{{- define "nbd-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: <release>-nbd-operator, or the release name alone when it already says so. */}}
{{- define "nbd-operator.fullname" -}}
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

{{- define "nbd-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "nbd-operator.labels" -}}
helm.sh/chart: {{ include "nbd-operator.chart" . }}
app.kubernetes.io/name: {{ include "nbd-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nbd-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component ("operator" or "node-plugin"); pass (dict "root" $ "component" "operator"). */}}
{{- define "nbd-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nbd-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "nbd-operator.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "nbd-operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nbd-operator.nodePluginServiceAccountName" -}}
{{- if .Values.nodePlugin.serviceAccount.create }}
{{- default (printf "%s-node-plugin" (include "nbd-operator.fullname" .)) .Values.nodePlugin.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.nodePlugin.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag (tag defaults to the chart's appVersion) or repository@digest; pass an image block and the root. */}}
{{- define "nbd-operator.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The CSI driver name: fixed, it is compiled into the node plugin (nbd-sidecar node-plugin). */}}
{{- define "nbd-operator.csiDriverName" -}}
nbd.csi.nbdoperator.io
{{- end }}
