{{/* Names */}}
{{- define "mixroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mixroute.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "mixroute.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "mixroute.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mixroute.labels" -}}
app.kubernetes.io/name: {{ include "mixroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "frontend") */}}
{{- define "mixroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mixroute.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mixroute.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Runtime endpoints: the bundled etcd/NATS Services, or the existing ones named in values. */}}
{{- define "mixroute.discoveryUrl" -}}
{{- if .Values.etcd.enabled -}}
{{- printf "etcd://%s-etcd:2379" (include "mixroute.fullname" .) -}}
{{- else if .Values.etcd.endpoint -}}
{{- if contains "://" .Values.etcd.endpoint -}}{{ .Values.etcd.endpoint }}{{- else -}}etcd://{{ .Values.etcd.endpoint }}{{- end -}}
{{- else -}}
{{- fail "etcd.enabled=false needs etcd.endpoint, e.g. --set etcd.endpoint=etcd://etcd.infra.svc:2379" -}}
{{- end -}}
{{- end -}}

{{- define "mixroute.eventsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s-nats:4222" (include "mixroute.fullname" .) -}}
{{- else if eq .Values.nats.url "zmq" -}}
zmq
{{- else if .Values.nats.url -}}
{{- if contains "://" .Values.nats.url -}}{{ .Values.nats.url }}{{- else -}}nats://{{ .Values.nats.url }}{{- end -}}
{{- else -}}
{{- fail "nats.enabled=false needs nats.url, e.g. --set nats.url=nats://nats.infra.svc:4222 (or zmq)" -}}
{{- end -}}
{{- end -}}

{{- define "mixroute.runtimeArgs" -}}
- --namespace
- {{ .Values.namespace | quote }}
- --discovery
- {{ include "mixroute.discoveryUrl" . | quote }}
- --events
- {{ include "mixroute.eventsUrl" . | quote }}
{{- end -}}

{{- define "mixroute.commonEnv" -}}
- name: MIXROUTE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if .Values.huggingface.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.huggingface.existingSecret | quote }}
      key: {{ .Values.huggingface.secretKey | quote }}
{{- end }}
{{- end -}}

{{/* One workers[] entry's type, validated. (dict "worker" $w) */}}
{{- define "mixroute.workerType" -}}
{{- $t := default "both" .worker.workerType -}}
{{- if not (has $t (list "prefill" "decode" "both")) -}}
{{- fail (printf "workers[].workerType must be prefill, decode or both (got %q)" $t) -}}
{{- end -}}
{{- $t -}}
{{- end -}}

{{/* workers[].name, default {type}worker{index}. (dict "worker" $w "index" $i) */}}
{{- define "mixroute.workerName" -}}
{{- $t := include "mixroute.workerType" . -}}
{{- default (printf "%sworker%d" $t (int .index)) .worker.name -}}
{{- end -}}

{{/* The served model name: model.servedModelName, else the model id (a path's last segment). */}}
{{- define "mixroute.servedModelName" -}}
{{- $m := default dict .worker.model -}}
{{- if $m.servedModelName -}}
{{- $m.servedModelName -}}
{{- else if hasPrefix "/" (default "" $m.path) -}}
{{- base $m.path -}}
{{- else -}}
{{- required "workers[].model.path is required" $m.path -}}
{{- end -}}
{{- end -}}

{{/* The router's config: the router's shipped defaults (files/router-defaults.yaml) with
the frontend Service as upstream, the workers' served names as models and every category
sent to the first worker's model (its best-scored entry kept); router.config merged over. */}}
{{- define "mixroute.routerConfig" -}}
{{- $base := .Files.Get "files/router-defaults.yaml" | fromYaml -}}
{{- $baseModels := default dict $base.models -}}
{{- $template := deepCopy (default dict (get $baseModels (default "" $base.default_model))) -}}
{{- $_ := unset $template "endpoint" -}}
{{- $models := dict -}}
{{- $first := "" -}}
{{- range $i, $w := .Values.workers -}}
{{- $name := include "mixroute.servedModelName" (dict "worker" $w) -}}
{{- if not $first }}{{ $first = $name }}{{ end -}}
{{- $_ := set $models $name (deepCopy $template) -}}
{{- end -}}
{{- $categories := list -}}
{{- range $c := (default list $base.categories) -}}
{{- $c = deepCopy $c -}}
{{- if $c.model_scores -}}
{{- $best := first $c.model_scores -}}
{{- range $s := $c.model_scores }}{{ if gt (float64 $s.score) (float64 $best.score) }}{{ $best = $s }}{{ end }}{{ end -}}
{{- $best = deepCopy $best -}}
{{- $_ := set $best "model" $first -}}
{{- $_ := set $c "model_scores" (list $best) -}}
{{- end -}}
{{- $categories = append $categories $c -}}
{{- end -}}
{{- $cfg := deepCopy $base -}}
{{- $_ := set $cfg "default_endpoint" (printf "http://%s-frontend:%d" (include "mixroute.fullname" .) (int .Values.frontend.httpPort)) -}}
{{- $_ := set $cfg "default_model" $first -}}
{{- $_ := set $cfg "models" $models -}}
{{- $_ := set $cfg "categories" $categories -}}
{{- $cfg = mergeOverwrite $cfg (deepCopy (default dict .Values.router.config)) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The worker entries the planner scales, as JSON {"prefill", "decode", "names"}:
planner.prefillWorker / .decodeWorker, else the first prefill entry and the first decode
(else both) entry. */}}
{{- define "mixroute.plannerTargets" -}}
{{- $prefill := "" -}}
{{- $decode := "" -}}
{{- $both := "" -}}
{{- $names := list -}}
{{- range $i, $w := .Values.workers -}}
{{- $type := include "mixroute.workerType" (dict "worker" $w) -}}
{{- $name := include "mixroute.workerName" (dict "worker" $w "index" $i) -}}
{{- $names = append $names $name -}}
{{- if and (eq $type "prefill") (not $prefill) }}{{ $prefill = $name }}{{ end -}}
{{- if and (eq $type "decode") (not $decode) }}{{ $decode = $name }}{{ end -}}
{{- if and (eq $type "both") (not $both) }}{{ $both = $name }}{{ end -}}
{{- end -}}
{{- $prefill = default $prefill .Values.planner.prefillWorker -}}
{{- $decode = default (default $both $decode) .Values.planner.decodeWorker -}}
{{- dict "prefill" $prefill "decode" $decode "names" $names | toJson -}}
{{- end -}}
