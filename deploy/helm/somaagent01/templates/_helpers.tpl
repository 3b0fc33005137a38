{{/* Names, labels, and the settings the worker reads (SOMA_*), checked before anything renders. */}}

{{- define "somaagent01.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "somaagent01.fullname" -}}
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

{{- define "somaagent01.selectorLabels" -}}
app.kubernetes.io/name: {{ include "somaagent01.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "somaagent01.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "somaagent01.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "somaagent01.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "somaagent01.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "somaagent01.secretName" -}}
{{- default (include "somaagent01.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "somaagent01.maxReplicas" -}}
{{- if .Values.autoscaling.maxReplicas }}{{ .Values.autoscaling.maxReplicas | int }}{{ else }}{{ .Values.kafka.topics.partitions | int }}{{ end }}
{{- end }}

{{/*
Every SOMA_* variable the worker knows (app/settings.py); tests/test_helm.py keeps this list equal to the
Settings fields. A name outside it stops the worker at start-up, so the chart refuses it at render time.
*/}}
{{- define "somaagent01.settingNames" -}}
SOMA_APP_ID SOMA_KAFKA_BOOTSTRAP SOMA_KAFKA_BROKERS SOMA_REDIS_URL SOMA_POSTGRES_DSN SOMA_KAFKA_SASL_MECHANISM
SOMA_KAFKA_SASL_USERNAME SOMA_KAFKA_SASL_PASSWORD SOMA_KAFKA_SSL_CAFILE SOMA_KAFKA_SSL_CERTFILE SOMA_KAFKA_SSL_KEYFILE
SOMA_TOPIC_PREFIX SOMA_TOPIC_PARTITIONS SOMA_TOPIC_REPLICATION SOMA_TOPIC_MIN_INSYNC_REPLICAS SOMA_DLQ_RETENTION_HOURS
SOMA_METRICS_ENABLED SOMA_WEB_HOST SOMA_WEB_PORT SOMA_MAX_BODY_BYTES SOMA_HTTP_MAX_CONNECTIONS
SOMA_HTTP_IDLE_TIMEOUT_SECONDS SOMA_HTTP_BODY_TIMEOUT_SECONDS SOMA_DATA_DIR SOMA_HEALTH_TIMEOUT_SECONDS
SOMA_REDIS_TIMEOUT_SECONDS SOMA_POSTGRES_POOL_MAX SOMA_KAFKA_PUBLISH_TIMEOUT_SECONDS SOMA_MAX_INFLIGHT_PUBLISHES
SOMA_MAX_STORAGE_LAG_SECONDS SOMA_READ_DEADLINE_SECONDS SOMA_KAFKA_SESSION_TIMEOUT_SECONDS SOMA_BATCH_MAX
SOMA_BATCH_WITHIN_SECONDS SOMA_MAX_EVENT_BYTES SOMA_REDIS_PREFIX SOMA_SESSION_CACHE_TTL_SECONDS
SOMA_TOOL_RUN_TTL_SECONDS SOMA_TABLE_STORE SOMA_TABLE_FLUSH_INTERVAL_SECONDS SOMA_TABLE_MIRROR_INTERVAL_SECONDS
SOMA_STREAM_RECOVERY_MAX SOMA_STREAM_QUEUE_MAX SOMA_SSE_HEARTBEAT_SECONDS SOMA_SSE_RETRY_MS SOMA_WS_HEARTBEAT_SECONDS
SOMA_WS_MAX_MESSAGE_BYTES SOMA_IDEMPOTENCY_TTL_SECONDS SOMA_TOOL_TIMEOUT_SECONDS SOMA_TOOL_TIMEOUTS
SOMA_HTTP_FETCH_ALLOWLIST SOMA_HTTP_FETCH_MAX_BYTES SOMA_HTTP_FETCH_PORTS SOMA_HTTP_FETCH_ALLOW_PRIVATE
SOMA_AUTH_REQUIRED SOMA_JWT_SECRET SOMA_JWT_PUBLIC_KEY SOMA_JWKS_URL SOMA_JWT_ALGORITHMS SOMA_JWT_AUDIENCE
SOMA_JWT_ISSUER SOMA_JWT_LEEWAY_SECONDS SOMA_JWT_TENANT_CLAIMS SOMA_JWKS_CACHE_SECONDS SOMA_JWKS_MIN_REFETCH_SECONDS
SOMA_JWKS_TIMEOUT_SECONDS SOMA_JWT_MAX_BYTES SOMA_STREAM_TICKET_TTL_SECONDS SOMA_AUTH_COOKIE SOMA_DEV_TOKENS
SOMA_RATE_LIMIT_PER_SECOND SOMA_RATE_LIMIT_BURST SOMA_RATE_LIMIT_ADDRESS_PER_SECOND SOMA_RATE_LIMIT_ADDRESS_BURST
SOMA_WS_ALLOWED_ORIGINS SOMA_STREAMS_PER_TENANT SOMA_STREAMS_PER_ADDRESS SOMA_OPA_URL SOMA_OPA_DECISION_PATH
SOMA_OPA_TOOL_DECISION_PATH SOMA_OPA_TIMEOUT_SECONDS SOMA_OPA_CACHE_SECONDS SOMA_SLM_URL SOMA_SLM_MODEL
SOMA_SLM_CONCURRENCY SOMA_SLM_MAX_TOKENS SOMA_SLM_TEMPERATURE SOMA_SLM_HISTORY_CHARS SOMA_SLM_COALESCE_SECONDS
SOMA_SLM_TIMEOUT_SECONDS SOMA_SLM_SYSTEM_PROMPT SOMA_SLM_PERSONAS SOMA_SLM_TOOLS SOMA_SLM_TOOL_CHOICE
SOMA_SLM_TOOL_ROUNDS SOMA_REPLY_RUN_TTL_SECONDS SOMA_STT_URL SOMA_STT_MODEL SOMA_STT_TIMEOUT_SECONDS
SOMA_STT_CONCURRENCY SOMA_VOICE_MAX_BYTES SOMA_STACK_DIR SOMA_CACHE_DIR
{{- end }}

{{/* A value as the text of an environment variable: numbers without an exponent (1048576, not 1.048576e+06). */}}
{{- define "somaagent01.envText" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
The non-secret settings, as a YAML map (the ConfigMap's data). Fails, naming the value to set, on what would
stop the worker or run it open: no Kafka address, no key source or two of them, a setting it does not know.
*/}}
{{- define "somaagent01.config" -}}
{{- $v := .Values }}
{{- $bootstrap := required "kafka.bootstrap is required: the Kafka bootstrap servers, host:port[,host:port]" $v.kafka.bootstrap }}
{{- $keys := list }}
{{- if $v.jwt.secret }}{{ $keys = append $keys "jwt.secret" }}{{ end }}
{{- if $v.jwt.publicKey }}{{ $keys = append $keys "jwt.publicKey" }}{{ end }}
{{- if $v.jwt.jwksUrl }}{{ $keys = append $keys "jwt.jwksUrl" }}{{ end }}
{{- if and (not $keys) (not $v.existingSecret) }}
{{- fail "authentication is on: set one JWT key source, jwt.secret, jwt.publicKey or jwt.jwksUrl (or existingSecret holding SOMA_JWT_SECRET)" }}
{{- end }}
{{- if gt (len $keys) 1 }}
{{- fail (printf "set one JWT key source, not %s: the worker verifies tokens of one key family" (join " and " $keys)) }}
{{- end }}
{{- if and $v.existingSecret (or $v.jwt.secret $v.redis.url $v.postgres.dsn $v.kafka.sasl.password) }}
{{- fail "with existingSecret, put SOMA_JWT_SECRET, SOMA_REDIS_URL, SOMA_POSTGRES_DSN and SOMA_KAFKA_SASL_PASSWORD in that Secret, not in jwt.secret, redis.url, postgres.dsn or kafka.sasl.password" }}
{{- end }}
{{- if not $v.existingSecret }}
{{- $_ := required "redis.url is required (or existingSecret): redis://[:password@]host:6379/0" $v.redis.url }}
{{- $_ := required "postgres.dsn is required (or existingSecret): postgresql://user:password@host:5432/db" $v.postgres.dsn }}
{{- end }}
{{- $config := dict
  "SOMA_APP_ID" $v.appId
  "SOMA_KAFKA_BOOTSTRAP" $bootstrap
  "SOMA_TOPIC_PARTITIONS" ($v.kafka.topics.partitions | int | toString)
  "SOMA_TOPIC_REPLICATION" ($v.kafka.topics.replication | int | toString)
  "SOMA_TOPIC_MIN_INSYNC_REPLICAS" ($v.kafka.topics.minInsyncReplicas | int | toString)
  "SOMA_WEB_HOST" $v.web.host
  "SOMA_WEB_PORT" ($v.web.port | int | toString)
  "SOMA_DATA_DIR" $v.dataDir.path
  "SOMA_AUTH_REQUIRED" "1"
  "SOMA_RATE_LIMIT_PER_SECOND" (include "somaagent01.envText" $v.rateLimit.perSecond)
  "SOMA_RATE_LIMIT_BURST" ($v.rateLimit.burst | int | toString)
}}
{{- with $v.kafka.topics.prefix }}{{ $_ := set $config "SOMA_TOPIC_PREFIX" . }}{{ end }}
{{- with $v.kafka.sasl.mechanism }}
{{- $_ := set $config "SOMA_KAFKA_SASL_MECHANISM" . }}
{{- $_ := set $config "SOMA_KAFKA_SASL_USERNAME" (required "kafka.sasl.username is required with kafka.sasl.mechanism" $v.kafka.sasl.username) }}
{{- if not $v.existingSecret }}
{{- $_ := required "kafka.sasl.password is required with kafka.sasl.mechanism (or existingSecret)" $v.kafka.sasl.password }}
{{- end }}
{{- end }}
{{- if $v.kafka.tls.enabled }}
{{- $_ := set $config "SOMA_KAFKA_SSL_CAFILE" (ternary "/etc/somaagent/kafka-ca/ca.crt" "system" (not (empty $v.kafka.tls.caSecret))) }}
{{- if $v.kafka.tls.clientCertSecret }}
{{- $_ := set $config "SOMA_KAFKA_SSL_CERTFILE" "/etc/somaagent/kafka-client/tls.crt" }}
{{- $_ := set $config "SOMA_KAFKA_SSL_KEYFILE" "/etc/somaagent/kafka-client/tls.key" }}
{{- end }}
{{- end }}
{{- with $v.jwt.publicKey }}{{ $_ := set $config "SOMA_JWT_PUBLIC_KEY" . }}{{ end }}
{{- with $v.jwt.jwksUrl }}{{ $_ := set $config "SOMA_JWKS_URL" . }}{{ end }}
{{- with $v.jwt.algorithms }}{{ $_ := set $config "SOMA_JWT_ALGORITHMS" . }}{{ end }}
{{- with $v.jwt.audience }}{{ $_ := set $config "SOMA_JWT_AUDIENCE" . }}{{ end }}
{{- with $v.jwt.issuer }}{{ $_ := set $config "SOMA_JWT_ISSUER" . }}{{ end }}
{{- with $v.web.allowedOrigins }}{{ $_ := set $config "SOMA_WS_ALLOWED_ORIGINS" (join "," .) }}{{ end }}
{{- with $v.opa.url }}{{ $_ := set $config "SOMA_OPA_URL" . }}{{ end }}
{{- with $v.tracing.otlpEndpoint }}
{{- $_ := set $config "OTEL_EXPORTER_OTLP_ENDPOINT" . }}
{{- $_ := set $config "OTEL_SERVICE_NAME" (default (include "somaagent01.fullname" $) $v.tracing.serviceName) }}
{{- $_ := set $config "OTEL_TRACES_SAMPLER" $v.tracing.sampler }}
{{- $_ := set $config "OTEL_TRACES_SAMPLER_ARG" (include "somaagent01.envText" $v.tracing.samplerArg) }}
{{- end }}
{{- $known := splitList " " (include "somaagent01.settingNames" . | replace "\n" " ") }}
{{- $secret := list "SOMA_POSTGRES_DSN" "SOMA_REDIS_URL" "SOMA_JWT_SECRET" "SOMA_KAFKA_SASL_PASSWORD" }}
{{- $localStack := list "SOMA_KAFKA_BROKERS" "SOMA_STACK_DIR" "SOMA_CACHE_DIR" }}
{{- $fromValues := list "SOMA_APP_ID" "SOMA_KAFKA_BOOTSTRAP" "SOMA_TOPIC_PREFIX" "SOMA_TOPIC_PARTITIONS" "SOMA_TOPIC_REPLICATION" "SOMA_TOPIC_MIN_INSYNC_REPLICAS" "SOMA_KAFKA_SASL_MECHANISM" "SOMA_KAFKA_SASL_USERNAME" "SOMA_KAFKA_SSL_CAFILE" "SOMA_KAFKA_SSL_CERTFILE" "SOMA_KAFKA_SSL_KEYFILE" "SOMA_WEB_HOST" "SOMA_WEB_PORT" "SOMA_DATA_DIR" "SOMA_AUTH_REQUIRED" "SOMA_JWT_PUBLIC_KEY" "SOMA_JWKS_URL" "SOMA_JWT_ALGORITHMS" "SOMA_JWT_AUDIENCE" "SOMA_JWT_ISSUER" "SOMA_RATE_LIMIT_PER_SECOND" "SOMA_RATE_LIMIT_BURST" "SOMA_WS_ALLOWED_ORIGINS" "SOMA_OPA_URL" }}
{{- range $name, $value := $v.settings }}
{{- if not (has $name $known) }}
{{- fail (printf "settings.%s: not a setting of the worker (docs/configuration.md lists them); it would refuse to start" $name) }}
{{- else if eq $name "SOMA_DEV_TOKENS" }}
{{- fail "settings.SOMA_DEV_TOKENS: the development token issuer signs a token for anyone; never in a deployment" }}
{{- else if has $name $secret }}
{{- fail (printf "settings.%s is a secret: it belongs in the Secret (the chart's values or existingSecret)" $name) }}
{{- else if has $name $localStack }}
{{- fail (printf "settings.%s configures the local development stack, not a deployed worker" $name) }}
{{- else if has $name $fromValues }}
{{- fail (printf "settings.%s is set by the chart from its values (see values.yaml)" $name) }}
{{- end }}
{{- $_ := set $config $name (include "somaagent01.envText" $value) }}
{{- end }}
{{- toYaml $config }}
{{- end }}
