{{/*
Required values, checked before anything renders: `helm install` and `helm
template` fail naming the value and what to put there.
*/}}
{{- define "fedmesh.validate" -}}
{{- $v := .Values -}}
{{- if not $v.clusterName -}}
{{- fail "value clusterName is required: this cluster's name in the federation, as registered with `fedctl cluster register NAME` (--set clusterName=NAME)" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $v.clusterName) -}}
{{- fail (printf "value clusterName %q: want a DNS label (lower-case letters, digits and '-', at most 63)" $v.clusterName) -}}
{{- end -}}
{{- if not $v.controlPlane.addresses -}}
{{- fail "value controlPlane.addresses is required: the control-plane replicas' gRPC host:port, reachable from this cluster (--set 'controlPlane.addresses={10.0.0.1:9001,10.0.0.2:9001}')" -}}
{{- end -}}
{{- range $v.controlPlane.addresses -}}
{{- if not (regexMatch "^[^:/ ]+:[0-9]{1,5}$|^\\[[0-9a-fA-F:.]+\\]:[0-9]{1,5}$" .) -}}
{{- fail (printf "value controlPlane.addresses: %q is not host:port" .) -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.controlPlane.caCert) (not $v.controlPlane.caConfigMap) -}}
{{- fail "value controlPlane.caCert is required: the federation CA's certificate (PEM, ca.crt from `fedctl ca init`; --set-file controlPlane.caCert=ca.crt), or controlPlane.caConfigMap naming a ConfigMap with key ca.crt" -}}
{{- end -}}
{{- if and $v.controlPlane.caCert (not (contains "BEGIN CERTIFICATE" $v.controlPlane.caCert)) -}}
{{- fail "value controlPlane.caCert: not a PEM certificate (want the contents of ca.crt, e.g. --set-file controlPlane.caCert=ca.crt)" -}}
{{- end -}}
{{- if and (not $v.syncer.joinToken) (not $v.syncer.joinTokenSecret) -}}
{{- fail "value syncer.joinToken is required: the token `fedctl cluster register` printed (--set syncer.joinToken=fmjt1...), or syncer.joinTokenSecret naming a Secret with key token" -}}
{{- end -}}
{{- if and (not $v.agent.joinTokens) (not $v.agent.joinTokenSecret) -}}
{{- fail "value agent.joinTokens is required: one token per node from `fedctl node token CLUSTER NODE` (--set agent.joinTokens.NODE=fmjt1...), or agent.joinTokenSecret naming a Secret with one key per node name" -}}
{{- end -}}
{{- if not $v.image.registry -}}
{{- fail "value image.registry is required: where the fedmesh-syncer and fedmesh-agent images are (make images builds them)" -}}
{{- end -}}
{{- end -}}
