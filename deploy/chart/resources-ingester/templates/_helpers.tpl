{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "resources-ingester.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name. The release name when it already contains the chart name, so
`helm install resources-ingester .` gives objects named plainly "resources-ingester".
*/}}
{{- define "resources-ingester.fullname" -}}
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

{{- define "resources-ingester.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. Keep in step with RELEASE/labels in deploy/gen-rbac.py. */}}
{{- define "resources-ingester.labels" -}}
helm.sh/chart: {{ include "resources-ingester.chart" . }}
{{ include "resources-ingester.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "resources-ingester.selectorLabels" -}}
app.kubernetes.io/name: {{ include "resources-ingester.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "resources-ingester.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "resources-ingester.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ClusterRoles are cluster-scoped: the name must not clash between releases. */}}
{{- define "resources-ingester.clusterRoleName" -}}
{{- include "resources-ingester.fullname" . }}
{{- end }}

{{- define "resources-ingester.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the DB credentials. */}}
{{- define "resources-ingester.dbSecretName" -}}
{{- if .Values.db.secret.create }}
{{- printf "%s-db" (include "resources-ingester.fullname" .) }}
{{- else }}
{{- required "db.secret.existingSecret is required when db.secret.create is false" .Values.db.secret.existingSecret }}
{{- end }}
{{- end }}

{{- define "resources-ingester.routesConfigMapName" -}}
{{- default (printf "%s-routes" (include "resources-ingester.fullname" .)) .Values.routes.existingConfigMap }}
{{- end }}

{{- define "resources-ingester.leaseName" -}}
{{- default (include "resources-ingester.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
DB_PARAMS: db.params, and with a CA (db.tls.caSecret) whose params name no sslmode,
sslmode=<db.tls.sslmode> (verify-full by default) and sslrootcert=<the mounted CA> in front:
a CA that is provided is used to verify the server. Empty db.tls.sslmode leaves db.params as is.
*/}}
{{- define "resources-ingester.dbParams" -}}
{{- $params := .Values.db.params | default "" -}}
{{- $mode := .Values.db.tls.sslmode | default "" -}}
{{- if and .Values.db.tls.caSecret $mode (not (contains "sslmode=" $params)) -}}
{{- $tls := printf "sslmode=%s" $mode -}}
{{- if not (contains "sslrootcert=" $params) -}}
{{- $tls = printf "%s&sslrootcert=%s/%s" $tls (trimSuffix "/" .Values.db.tls.mountPath) .Values.db.tls.caKey -}}
{{- end -}}
{{- $params = ternary $tls (printf "%s&%s" $tls $params) (eq $params "") -}}
{{- end -}}
{{- $params -}}
{{- end }}
