// Package scale holds fedmesh's scale measurements that are not a load
// run: what one ipcache entry costs an agent (Go heap, per part of the
// agent that holds it) and the kernel (the host ipcache map's own memory
// accounting). The load runs themselves are tools/fedload; README.md
// holds the measured numbers, the commands that reproduce them and the
// cost model built from them.
package scale
