// Command fedctl is the command-line client of the fedmesh control plane.
package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/fedmesh/fedmesh/tools/fedctl/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cli.NewRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	switch {
	case errors.Is(err, cli.ErrDenied):
		os.Exit(2) // `fedctl reach` answered "denied"
	case err != nil:
		os.Exit(1)
	}
}
