{{- define "fleetdeck-runner.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fleetdeck-runner.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fleetdeck-runner.labels" -}}
{{ include "fleetdeck-runner.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "fleetdeck-runner.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "fleetdeck-runner.fullname" .) -}}
{{- end -}}

{{- define "fleetdeck-runner.postgresqlName" -}}
{{- printf "%s-postgresql" (include "fleetdeck-runner.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret and key holding FLEETDECK_DATABASE_URL, as "name key" (store: postgresql). */}}
{{- define "fleetdeck-runner.databaseUrlRef" -}}
{{- $pg := .Values.postgresql -}}
{{- if $pg.bundled.enabled -}}
{{ include "fleetdeck-runner.postgresqlName" . }} database-url
{{- else if $pg.external.existingSecret -}}
{{ $pg.external.existingSecret }} {{ $pg.external.existingSecretKey }}
{{- else -}}
{{ include "fleetdeck-runner.secretName" . }} database-url
{{- end -}}
{{- end -}}

{{/* Refuses values that cannot work, naming the value. Included by every template. */}}
{{- define "fleetdeck-runner.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.store (list "sqlite" "postgresql")) -}}
{{- fail (printf "store: must be sqlite or postgresql, not %q" $v.store) -}}
{{- end -}}
{{- if and (eq $v.store "sqlite") (gt (int $v.replicaCount) 1) -}}
{{- fail (printf "replicaCount: %d replicas need store: postgresql; with store: sqlite the runner must run as 1 replica (one SQLite file on one volume)" (int $v.replicaCount)) -}}
{{- end -}}
{{- if eq $v.store "postgresql" -}}
{{- $external := or $v.postgresql.external.url $v.postgresql.external.existingSecret -}}
{{- if and $external $v.postgresql.bundled.enabled -}}
{{- fail "postgresql: set either external (url or existingSecret) or bundled.enabled, not both" -}}
{{- end -}}
{{- if not (or $external $v.postgresql.bundled.enabled) -}}
{{- fail "postgresql: store: postgresql needs postgresql.external.url, postgresql.external.existingSecret or postgresql.bundled.enabled" -}}
{{- end -}}
{{- if and $v.postgresql.external.url $v.secrets.existingSecret (not $v.postgresql.external.existingSecret) -}}
{{- fail "postgresql.external.url: with secrets.existingSecret the chart makes no Secret to put it in; use postgresql.external.existingSecret" -}}
{{- end -}}
{{- else if $v.postgresql.bundled.enabled -}}
{{- fail "postgresql.bundled.enabled: the bundled PostgreSQL is used only with store: postgresql" -}}
{{- end -}}
{{- if not $v.secrets.existingSecret -}}
{{- if not $v.secrets.runnerTokens -}}{{- fail "secrets.runnerTokens: required (or secrets.existingSecret)" -}}{{- end -}}
{{- if not $v.secrets.vaultPassword -}}{{- fail "secrets.vaultPassword: required (or secrets.existingSecret)" -}}{{- end -}}
{{- end -}}
{{- if and $v.inventory.existingClaim $v.inventory.secret.name -}}
{{- fail "inventory: set either existingClaim or secret.name, not both" -}}
{{- end -}}
{{- if not (or $v.inventory.existingClaim $v.inventory.secret.name) -}}
{{- fail "inventory: required: inventory.existingClaim (a volume with the environment) or inventory.secret.name" -}}
{{- end -}}
{{- if and $v.inventory.secret.name (not $v.inventory.secret.items) -}}
{{- fail "inventory.secret.items: required with inventory.secret.name (key -> path of each file)" -}}
{{- end -}}
{{- if not $v.ssh.existingSecret -}}
{{- fail "ssh.existingSecret: required (a Secret with the SSH private key of the runs, e.g. key id_ed25519)" -}}
{{- end -}}
{{- end -}}
