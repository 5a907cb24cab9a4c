// Package helm holds fedmesh's Helm chart (fedmesh/, the chart itself) and
// its tests: `helm lint` is clean, required values are refused naming the
// value, the rendered objects carry the RBAC, capabilities and probes the
// components need and no more, and every rendered object passes a
// server-side dry-run against a real kube-apiserver. Helm v4 is pinned in
// tools/helmbin and run with `go tool -modfile=tools/helmbin/go.mod helm`.
package helm
