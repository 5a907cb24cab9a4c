// Package netnsrun runs a function inside another network namespace, on an
// OS thread of its own, so that no other goroutine ever runs in a
// namespace it did not ask for. It is the one implementation of that dance
// (lock the thread, enter, run, return, unlock) for the dataplane, the
// WireGuard device and the tests.
package netnsrun

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread inside the network namespace at path (a
// /proc/<pid>/ns/net or /run/netns/<name> file); path "" runs fn here.
// Sockets and links fn creates stay in that namespace after it returns.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer f.Close()
	if err := DoFD(int(f.Fd()), fn); err != nil {
		return err
	}
	return nil
}

// DoFD is Do with the namespace open as fd (which stays the caller's).
func DoFD(fd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		// A thread that cannot return to its namespace stays locked: Go
		// ends it with this goroutine instead of reusing it.
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			if ferr == nil {
				ferr = fmt.Errorf("leave netns: %w", err)
			}
			errc <- ferr
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
