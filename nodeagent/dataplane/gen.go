package dataplane

// The BPF object is generated and committed, so `go build` needs no clang.
// `make generate` rebuilds it with the pinned bpf2go and Debian's clang.
//go:generate go tool -modfile=../../tools/devtools/go.mod bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types fedmesh bpf/fedmesh.c -- -I/usr/include/x86_64-linux-gnu
