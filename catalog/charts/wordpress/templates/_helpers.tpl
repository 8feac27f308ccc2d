{{/* Names and labels shared by every object of the wordpress chart. */}}
{{- define "wordpress.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "wordpress.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wordpress.secretName" -}}
{{- printf "%s-secret" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wordpress.claimName" -}}
{{- printf "%s-data" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* 52 characters at most: the StatefulSet's revision label appends "-<hash>" within 63 */ -}}
{{- define "wordpress.dbName" -}}
{{- printf "%s-mariadb" (.Release.Name | trunc 44 | trimSuffix "-") -}}
{{- end -}}

{{- define "wordpress.dbLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-mariadb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: database
app.kubernetes.io/part-of: {{ .Chart.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "wordpress.dbSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-mariadb
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
