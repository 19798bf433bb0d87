{{- define "mptcpify.labels" -}}
app.kubernetes.io/name: mptcpify-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "mptcpify.selector" -}}
app.kubernetes.io/name: mptcpify-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
