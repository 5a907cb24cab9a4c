//go:build tools

// Package kubebin pins the Kubernetes builds; see go.mod. kube-apiserver
// runs in the syncer's tests and every lab; kubelet, kube-controller-manager
// and kube-scheduler run in the kubelet lab (fedlab up --kubelet).
package kubebin

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
