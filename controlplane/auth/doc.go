// Package auth owns the control plane's security edge: principals decoded
// from client certificates' URI SANs, the pure per-RPC authorization
// decision (Authorize) and its table over every fedmesh.v1 RPC, who owns
// objects only one principal may write (CheckOwner: a cluster's syncer its
// Kubernetes NetworkPolicies and ClusterNetworkPolicies), the gRPC interceptors that authenticate the
// verified TLS peer and authorize each call, per-principal rate and
// message-size limits, the TLS 1.3 configs (mTLS) for gRPC and for
// hashicorp/raft's network transport, and join tokens exchanged once for a
// certificate. The certificate authority itself is in the ca sub-package.
package auth
