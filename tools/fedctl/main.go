// Command fedctl is the command-line client of the fedmesh control plane.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fedmesh/fedmesh/tools/fedctl/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
