{{/* Names and labels. */}}
{{- define "contactd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "contactd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "contactd.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "contactd.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "contactd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "contactd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: pass (list $ "worker"). */}}
{{- define "contactd.selectorLabels" -}}
{{- $ := index . 0 }}
app.kubernetes.io/name: {{ include "contactd.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "contactd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "contactd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "contactd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
contactd.toml. Optional strings are left out when empty, as the binary expects.
*/}}
{{- define "contactd.config" -}}
{{- range $key, $_ := .Values.kafka.properties }}
{{- if regexMatch "password|secret|\\.pem$|jaas" $key }}
{{- fail (printf "kafka.properties.%s is a secret and would land in a ConfigMap: pass it through secretEnv (CONTACTD__KAFKA__PROPERTIES from a Secret)" $key) }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "scylla://" .Values.store.url) }}
{{- fail "store.url must be scylla://host[,host...][:port]/keyspace: pods cannot share the embedded SQLite store" }}
{{- end }}
{{- $scylla := dict "replication" .Values.store.replication "tls" .Values.store.tls.enabled }}
{{- with .Values.store.localDc }}{{ $_ := set $scylla "local_dc" . }}{{ end }}
{{- with .Values.store.username }}{{ $_ := set $scylla "username" . }}{{ end }}
{{- if .Values.store.tls.enabled }}
{{- $_ := set $scylla "tls_ca_file" "/etc/contactd/scylla-tls/ca.crt" }}
{{- if .Values.store.tls.clientCertificate }}
{{- $_ := set $scylla "tls_cert_file" "/etc/contactd/scylla-tls/tls.crt" }}
{{- $_ := set $scylla "tls_key_file" "/etc/contactd/scylla-tls/tls.key" }}
{{- end }}
{{- end }}
{{- $kafka := dict "brokers" .Values.kafka.brokers "events_topics" .Values.kafka.eventsTopics "changes_topic" .Values.kafka.changesTopic "dead_letter_topic" .Values.kafka.deadLetterTopic "group_id" .Values.kafka.groupId "properties" .Values.kafka.properties }}
{{- $worker := dict "listen" "0.0.0.0:9464" "lanes" (int .Values.worker.lanes) "batch_size" (int .Values.worker.batchSize) "max_in_flight" (int .Values.worker.maxInFlight) "drain_deadline_secs" (int .Values.worker.drainDeadlineSeconds) }}
{{- $indexer := dict "listen" (printf "0.0.0.0:%d" (int .Values.indexer.service.port)) }}
{{- $config := dict "data_dir" "/var/lib/contactd" "store" .Values.store.url "scylla" $scylla "kafka" $kafka "worker" $worker "indexer" $indexer "log" (dict "format" .Values.log.format "filter" .Values.log.filter) }}
{{- /* YAML numbers reach toToml as floats (250 -> 250.0), and every numeric
setting of contactd is an integer. */}}
{{- regexReplaceAll "(?m)^(\\s*[A-Za-z0-9_\".-]+ = -?[0-9]+)\\.0$" (toToml (mustMergeOverwrite $config (deepCopy .Values.config))) "${1}" }}
{{- end }}

{{/* Environment shared by every contactd container. */}}
{{- define "contactd.env" -}}
- name: CONTACTD_CONFIG
  value: /etc/contactd/contactd.toml
{{- with .Values.api.tokensSecret }}
- name: CONTACTD__API__TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: tokens
{{- end }}
{{- with .Values.api.writeTokensSecret }}
- name: CONTACTD__API__WRITE_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: tokens
{{- end }}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end }}

{{/* Volumes every contactd pod mounts: its config, scratch space, Scylla TLS. */}}
{{- define "contactd.volumes" -}}
- name: config
  configMap:
    name: {{ index . 1 }}
- name: tmp
  emptyDir: {}
{{- $ := index . 0 }}
{{- if $.Values.store.tls.enabled }}
- name: scylla-tls
  secret:
    secretName: {{ required "store.tls.secretName is required with store.tls.enabled" $.Values.store.tls.secretName }}
{{- end }}
{{- with $.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "contactd.volumeMounts" -}}
- name: config
  mountPath: /etc/contactd
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.store.tls.enabled }}
- name: scylla-tls
  mountPath: /etc/contactd/scylla-tls
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Spread constraints of one component, pass (list $ "worker"): each entry of
its topologySpread with the component's pods as the ones to spread. */}}
{{- define "contactd.topologySpread" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- range (index $.Values $component).topologySpread }}
- maxSkew: {{ .maxSkew | default 1 }}
  topologyKey: {{ .topologyKey }}
  whenUnsatisfiable: {{ .whenUnsatisfiable | default "ScheduleAnyway" }}
  labelSelector:
    matchLabels:
      {{- include "contactd.selectorLabels" (list $ $component) | nindent 6 }}
{{- end }}
{{- end }}

{{/* "true" when workers scale with a KEDA ScaledObject: worker.keda.enabled
true, or "auto" on a cluster that serves KEDA's API. */}}
{{- define "contactd.keda" -}}
{{- $keda := .Values.worker.keda.enabled }}
{{- if or (eq (toString $keda) "true") (and (eq (toString $keda) "auto") (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject")) }}true{{ end }}
{{- end }}

{{- define "contactd.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  failureThreshold: 2
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 2
  failureThreshold: 60
{{- end }}
