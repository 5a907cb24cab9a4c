//go:build tools

// Package kubebin pins the kube-apiserver build; see go.mod.
package kubebin

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
