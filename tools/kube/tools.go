//go:build tools

// Package tools pins the Kubernetes control-plane binaries the tests run (see the Makefile's
// tools-kube): kube-apiserver and kubectl from k8s.io/kubernetes, with every k8s.io staging
// module replaced by its published release of the same version.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
