{{/* Names, labels and image references shared by every template. */}}

{{- define "fedmesh.fullname" -}}
{{- if contains "fedmesh" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-fedmesh" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedmesh.labels" -}}
app.kubernetes.io/name: fedmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* selector labels of one component: (dict "root" . "component" "agent") */}}
{{- define "fedmesh.selector" -}}
app.kubernetes.io/name: fedmesh
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image reference of one component: (dict "root" . "name" "fedmesh-agent") */}}
{{- define "fedmesh.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" (.root.Values.image.registry | trimSuffix "/") .name $tag -}}
{{- end -}}

{{- define "fedmesh.caConfigMap" -}}
{{- .Values.controlPlane.caConfigMap | default (printf "%s-ca" (include "fedmesh.fullname" .)) -}}
{{- end -}}

{{- define "fedmesh.syncerTokenSecret" -}}
{{- .Values.syncer.joinTokenSecret | default (printf "%s-syncer-join" (include "fedmesh.fullname" .)) -}}
{{- end -}}

{{- define "fedmesh.agentTokenSecret" -}}
{{- .Values.agent.joinTokenSecret | default (printf "%s-agent-join" (include "fedmesh.fullname" .)) -}}
{{- end -}}

{{- define "fedmesh.controlPlaneAddresses" -}}
{{- join "," .Values.controlPlane.addresses -}}
{{- end -}}

{{/* env that points client-go's in-cluster config at the API server when
kubernetes.serviceHost is set (clusters without kube-proxy). */}}
{{- define "fedmesh.kubernetesEnv" -}}
{{- with .Values.kubernetes.serviceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.kubernetes.servicePort | quote }}
{{- end }}
{{- end -}}
