//go:build tools

// Package etcdbin pins the etcd server build; see go.mod.
package etcdbin

import _ "go.etcd.io/etcd/server/v3/etcdmain"
