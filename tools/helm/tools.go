//go:build tools

// Package tools pins helm (see the Makefile's tools-helm): `helm lint` and `helm template` of
// deploy/helm/canary-gate run in `make test`.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
