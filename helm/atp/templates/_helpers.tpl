{{/* Names, labels, and what the chart derives from values. */}}

{{- define "atp.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-atp, or the release name when it already contains "atp". */}}
{{- define "atp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "atp.headless" -}}
{{- printf "%s-headless" (include "atp.fullname" .) -}}
{{- end -}}

{{- define "atp.etcd.fullname" -}}
{{- printf "%s-etcd" (include "atp.fullname" .) -}}
{{- end -}}

{{- define "atp.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "atp.fullname" .) -}}
{{- end -}}

{{- define "atp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "atp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "atp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: atpd
{{- end -}}

{{- define "atp.etcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end -}}

{{- define "atp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The DNS suffix of the release's namespace: <namespace>.svc.<domain>. */}}
{{- define "atp.svcSuffix" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* etcd's client endpoints as atpd's etcd_endpoints (comma-separated). */}}
{{- define "atp.etcdEndpoints" -}}
{{- if .Values.etcd.deploy -}}
{{- $endpoints := list -}}
{{- range $ordinal := until (int .Values.etcd.replicas) -}}
{{- $endpoints = append $endpoints (printf "http://%s-%d.%s.%s:2379" (include "atp.etcd.fullname" $) $ordinal (include "atp.etcd.headless" $) (include "atp.svcSuffix" $)) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* etcd's --initial-cluster: every member's name and peer URL. */}}
{{- define "atp.etcdInitialCluster" -}}
{{- $members := list -}}
{{- range $ordinal := until (int .Values.etcd.replicas) -}}
{{- $name := printf "%s-%d" (include "atp.etcd.fullname" $) $ordinal -}}
{{- $members = append $members (printf "%s=http://%s.%s.%s:2380" $name $name (include "atp.etcd.headless" $) (include "atp.svcSuffix" $)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/* Whether atpd runs in cluster mode ("true" or ""). */}}
{{- define "atp.clusterMode" -}}
{{- if include "atp.etcdEndpoints" . -}}true{{- end -}}
{{- end -}}

{{/* A config value as TOML: strings quoted (JSON escapes are TOML escapes),
     whole numbers as integers (YAML numbers arrive as float64), other
     numbers as floats, booleans as they are. */}}
{{- define "atp.tomlValue" -}}
{{- $value := .value -}}
{{- /* `--set config.trace_sample_ratio=0.5` gives a string: atpd's only float key. */ -}}
{{- if and (eq .key "trace_sample_ratio") (kindIs "string" $value) (regexMatch "^[0-9]+(\\.[0-9]+)?$" $value) -}}
{{- $value = float64 $value -}}
{{- end -}}
{{- if kindIs "string" $value -}}
{{- toJson $value -}}
{{- else if kindIs "bool" $value -}}
{{- $value -}}
{{- else if or (kindIs "float64" $value) (kindIs "float32" $value) (kindIs "int" $value) (kindIs "int64" $value) -}}
{{- if eq (float64 $value) (float64 (int64 $value)) -}}
{{- int64 $value -}}
{{- else -}}
{{- float64 $value -}}
{{- end -}}
{{- else -}}
{{- fail (printf "config.%s: a string, number or boolean is expected, got %s" .key (kindOf $value)) -}}
{{- end -}}
{{- end -}}

{{/* drain_timeout_ms and shutdown_grace_s as atpd will use them (its
     defaults when null), in whole seconds rounded up. */}}
{{- define "atp.stopSeconds" -}}
{{- $drainMs := 60000 -}}
{{- if not (kindIs "invalid" .Values.config.drain_timeout_ms) -}}
{{- $drainMs = int64 .Values.config.drain_timeout_ms -}}
{{- end -}}
{{- $grace := 10 -}}
{{- if not (kindIs "invalid" .Values.config.shutdown_grace_s) -}}
{{- $grace = int64 .Values.config.shutdown_grace_s -}}
{{- end -}}
{{- add (div (add $drainMs 999) 1000) $grace -}}
{{- end -}}

{{- define "atp.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $preStop := 0 -}}
{{- if and .Values.drain.preStop (include "atp.clusterMode" .) -}}
{{- $preStop = int64 .Values.drain.timeoutSeconds -}}
{{- end -}}
{{- add $preStop (include "atp.stopSeconds" . | int64) 15 -}}
{{- else -}}
{{- int64 .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Refuses values the chart cannot honour, with a message naming the value. */}}
{{- define "atp.validate" -}}
{{- $config := .Values.config -}}
{{- range $key := list "node_id" "node_name" "advertised_addr" "etcd_endpoints" -}}
{{- if not (kindIs "invalid" (index $config $key)) -}}
{{- fail (printf "config.%s is set per pod or from etcd.* by the chart; leave it null" $key) -}}
{{- end -}}
{{- end -}}
{{- if not (hasSuffix ":50051" (toString $config.listen_addr)) -}}
{{- fail "config.listen_addr must end in :50051 (the chart's ports, probes and Services use it)" -}}
{{- end -}}
{{- if not (hasPrefix "/var/lib/atp/" (toString $config.data_dir)) -}}
{{- fail "config.data_dir must be under /var/lib/atp/ (the pod's volume)" -}}
{{- end -}}
{{- $metrics := toString (default "" $config.metrics_listen_addr) -}}
{{- if and $metrics (not (hasSuffix ":9464" $metrics)) -}}
{{- fail "config.metrics_listen_addr must be empty or end in :9464 (the chart's metrics port)" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not $metrics) -}}
{{- fail "serviceMonitor.enabled needs config.metrics_listen_addr" -}}
{{- end -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be at least 1" -}}
{{- end -}}
{{- if and .Values.etcd.deploy .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is for an existing etcd: set etcd.deploy to false with it" -}}
{{- end -}}
{{- if and .Values.etcd.deploy (lt (int .Values.etcd.replicas) 1) -}}
{{- fail "etcd.replicas must be at least 1" -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "atp.clusterMode" .)) -}}
{{- fail "replicas > 1 needs etcd: set etcd.deploy or etcd.endpoints (without etcd every pod would be a separate single node)" -}}
{{- end -}}
{{- range $key := list "tls" "auth" "backup" -}}
{{- if index $.Values $key -}}
{{- fail (printf "%s is reserved for a later version of the chart and not supported yet; leave it empty" $key) -}}
{{- end -}}
{{- end -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) -}}
{{- $needed := include "atp.stopSeconds" . | int64 -}}
{{- if and .Values.drain.preStop (include "atp.clusterMode" .) -}}
{{- $needed = add $needed (int64 .Values.drain.timeoutSeconds) -}}
{{- end -}}
{{- if le (int64 .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds must exceed the drain and shutdown time (%d s)" $needed) -}}
{{- end -}}
{{- end -}}
{{- end -}}
