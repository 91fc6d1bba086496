//go:build tools

// Package kubeapiserver only pins k8s.io/kubernetes so that go mod tidy keeps
// everything cmd/kube-apiserver and cmd/kubelet need; the binaries are built
// by make kube-apiserver and make kubelet into .cache/bin.
package kubeapiserver

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
