// Command pause is the sandbox ("pause") container of the lab's kubelets: it
// holds a pod's namespaces open, reaps orphaned children when it is the
// pod's PID 1, and exits 0 on SIGINT or SIGTERM. The lab builds it here
// instead of pulling registry.k8s.io/pause: the lab runs offline.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
