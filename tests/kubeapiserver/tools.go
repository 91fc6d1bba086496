//go:build tools

// Package kubeapiserver only pins k8s.io/kubernetes so that go mod tidy keeps
// everything cmd/kube-apiserver needs; the binary is built by make
// kube-apiserver into .cache/bin.
package kubeapiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
