{{/* Labels every object carries. */}}
{{- define "kaitopy.labels" -}}
app.kubernetes.io/part-of: kaitopy
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "kaitopy.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Checks that fail the render with a message saying what to set. */}}
{{- define "kaitopy.validate" -}}
{{- if not (has .Values.provider (list "kwok" "azure")) }}
{{- fail (printf "provider must be kwok or azure, not %q" .Values.provider) }}
{{- end }}
{{- if not (has .Values.nodeProvisioner (list "auto" "byo")) }}
{{- fail (printf "nodeProvisioner must be auto or byo, not %q" .Values.nodeProvisioner) }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (or (gt (int .Values.controller.replicas) 1) (gt (int .Values.provisioner.replicas) 1)) }}
{{- fail "more than one replica needs leaderElection.enabled=true" }}
{{- end }}
{{- if and (eq .Values.provider "azure") (eq .Values.nodeProvisioner "auto") }}
{{- range $key := list "subscriptionId" "resourceGroup" "clusterName" "location" "tenantId" "workloadIdentityClientId" }}
{{- if not (index $.Values.azure $key) }}
{{- fail (printf "provider=azure needs azure.%s" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kaitopy.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "kaitopy.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: ["ALL"]}
{{- end }}
