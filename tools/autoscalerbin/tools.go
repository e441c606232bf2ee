//go:build tools

// Package tools pins the autoscaler binaries that tools/build-autoscaler.sh builds.
package tools

import (
	_ "sigs.k8s.io/karpenter/kwok"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
