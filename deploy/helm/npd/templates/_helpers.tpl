{{/* The labels deploy/base's kustomization puts on every object. */}}
{{- define "npd.labels" -}}
app.kubernetes.io/name: npd
app.kubernetes.io/part-of: npd
{{- end }}

{{/* The agent's config.yaml: the value, else the shipped file (remediation's overlay's with
remediation.enabled); ending in one newline, as a YAML block keeps it. */}}
{{- define "npd.config" -}}
{{- $text := .Files.Get "files/config.yaml" }}
{{- if .Values.config }}
{{- $text = .Values.config }}
{{- else if .Values.remediation.enabled }}
{{- $text = .Files.Get "files/remediation-config.yaml" }}
{{- end }}
{{- printf "%s\n" (regexReplaceAll "\\s+$" $text "") }}
{{- end }}

{{/* npd-config-<hash>, the name kustomize's configMapGenerator gives the same data: the
sha256 of this JSON (kustomize 5 hashes an empty name), its first 10 hex digits with 0, 1, 3,
a and e replaced. Both render the same objects, and a change of config rolls the pods. */}}
{{- define "npd.configMapName" -}}
{{- $json := dict "data" (dict "config.yaml" (include "npd.config" .)) "kind" "ConfigMap" "name" "" | toJson }}
{{- $hash := $json | sha256sum | trunc 10 | replace "0" "g" | replace "1" "h" | replace "3" "k" | replace "a" "m" | replace "e" "t" }}
{{- printf "npd-config-%s" $hash }}
{{- end }}

{{/* The config's remediation.taints section, as YAML (include ... | fromYaml). */}}
{{- define "npd.taints" -}}
{{- $config := include "npd.config" . | fromYaml }}
{{- if hasKey $config "Error" }}
{{- fail (printf "config is not a YAML mapping: %s" $config.Error) }}
{{- end }}
{{- dig "remediation" "taints" dict $config | toYaml }}
{{- end }}
