package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Proc is a daemon the lab started, recorded so `fedlab down` (even from
// another process, after a crash) stops exactly what the lab started.
type Proc struct {
	Name string `json:"name"`
	NS   string `json:"ns"`
	// Cgroup is the cgroup v2 directory the process runs in ("" where
	// fedlab runs): a pod's processes run in their node's.
	Cgroup string `json:"cgroup,omitempty"`
	// Resolv is the resolv.conf bind-mounted for it ("" for none): a
	// pod's process resolves through its node's resolver.
	Resolv string   `json:"resolv,omitempty"`
	PID    int      `json:"pid"`
	Argv   []string `json:"argv"`
	Log    string   `json:"log"`
}

// State is what `fedlab up` leaves in its state dir.
type State struct {
	Config Config `json:"config"`
	Procs  []Proc `json:"procs"`
}

// StateDir is where a lab keeps configs, logs and its state file.
func StateDir(name string) string { return filepath.Join("/run/fedlab", name) }

func (s *State) save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, "state.json"))
}

// LoadState reads a lab's state; a missing lab is os.ErrNotExist.
func LoadState(name string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(StateDir(name), "state.json"))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse lab state: %w", err)
	}
	return &s, nil
}

// start runs argv inside network namespace ns, detached (own session) so it
// outlives fedlab, with its output in dir/<name>.log.
func start(dir, ns, name string, argv []string, env ...string) (Proc, error) {
	return startIn(dir, ns, "", name, argv, env...)
}

// startIn is start with the process inside cgroup (a cgroup v2 directory;
// "" leaves it where fedlab is), from its first instruction.
func startIn(dir, ns, cgroup, name string, argv []string, env ...string) (Proc, error) {
	return startProc(dir, Proc{Name: name, NS: ns, Cgroup: cgroup, Argv: argv}, env...)
}

// startProc starts p.Argv as p describes (namespace, cgroup, resolv.conf)
// and returns p with its PID and log.
func startProc(dir string, p Proc, env ...string) (Proc, error) {
	name, ns := p.Name, p.NS
	full := enterPod(ns, p.Cgroup, p.Resolv, p.Argv)
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Proc{}, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	// Reap it if it dies while fedlab still runs; afterwards init does.
	go func() { _ = cmd.Wait() }()
	p.PID, p.Log = cmd.Process.Pid, logPath
	return p, nil
}

// alive reports whether p still runs as the program the lab started (a
// recycled PID running something else is not ours to stop).
func (p Proc) alive() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) == 0 || len(p.Argv) == 0 {
		return false
	}
	// nsenter execs the daemon, so the process is the daemon itself. Some
	// daemons retitle themselves ("/usr/bin/redis-server *:6379"): the
	// program is the first word.
	prog, _, _ := strings.Cut(args[0], " ")
	return filepath.Base(prog) == filepath.Base(p.Argv[0])
}

// stop sends SIGTERM, then SIGKILL after grace, to the process group the
// lab started, and only if it is still the program it started.
func (p Proc) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(-p.PID, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !p.alive() || zombie(p.PID) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := syscall.Kill(-p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// waitFor polls check until it succeeds or ctx ends.
func waitFor(ctx context.Context, what string, check func() error) error {
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Proc returns the lab process with this name.
func (l *Lab) Proc(name string) (Proc, bool) {
	for _, p := range l.State.Procs {
		if p.Name == name {
			return p, true
		}
	}
	return Proc{}, false
}

// Signal sends sig to a lab process (by the PID the lab recorded).
func (l *Lab) Signal(name string, sig syscall.Signal) error {
	p, ok := l.Proc(name)
	if !ok || !p.alive() {
		return fmt.Errorf("lab process %s is not running", name)
	}
	return syscall.Kill(p.PID, sig)
}

// Kill SIGKILLs a lab process and its process group at once, as a lost
// machine: nothing it runs gets to say goodbye (children in groups of their
// own go with their parent-death signal).
func (l *Lab) Kill(name string) error {
	p, ok := l.Proc(name)
	if !ok || !p.alive() {
		return fmt.Errorf("lab process %s is not running", name)
	}
	if err := syscall.Kill(-p.PID, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s (pid %d): %w", name, p.PID, err)
	}
	return nil
}

// Restart starts a stopped (or killed) lab process again with the same
// command line, in the same namespace.
func (l *Lab) Restart(name string) error {
	for i, p := range l.State.Procs {
		if p.Name != name {
			continue
		}
		if p.alive() && !zombie(p.PID) {
			return fmt.Errorf("lab process %s still runs (pid %d)", name, p.PID)
		}
		np, err := startProc(l.Dir, p)
		if err != nil {
			return err
		}
		l.State.Procs[i] = np
		return l.State.save(l.Dir)
	}
	return fmt.Errorf("no lab process %s", name)
}

// Stop stops one lab process (SIGTERM, then SIGKILL).
func (l *Lab) Stop(name string) error {
	p, ok := l.Proc(name)
	if !ok {
		return fmt.Errorf("no lab process %s", name)
	}
	return p.stop(5 * time.Second)
}

// Alive reports whether a lab process runs.
func (l *Lab) Alive(name string) bool {
	p, ok := l.Proc(name)
	return ok && p.alive() && !zombie(p.PID)
}

// Load returns the running lab with this name, from its state.
func Load(name string) (*Lab, error) {
	st, err := LoadState(name)
	if err != nil {
		return nil, fmt.Errorf("lab %q is not up: %w", name, err)
	}
	topo, err := Plan(st.Config)
	if err != nil {
		return nil, err
	}
	return &Lab{Topo: topo, Dir: StateDir(name), State: st}, nil
}
