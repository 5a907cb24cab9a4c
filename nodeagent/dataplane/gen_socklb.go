package dataplane

// The socket-level service translation object, generated and committed like
// the policy object (gen.go).
//go:generate go tool -modfile=../../tools/devtools/go.mod bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types socklb bpf/sock_lb.c -- -I/usr/include/x86_64-linux-gnu
