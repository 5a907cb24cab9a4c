package bgp

// The real-component harness: network namespaces, real BIRD 2 and FRR, and
// the fedmesh speaker in a child process.
//
// Why a child process: a network namespace belongs to an OS thread, and
// GoBGP listens, accepts and dials from goroutines of its own that may run
// on any thread. Rather than pinning GoBGP's goroutines (impossible from
// outside), the test binary re-executes itself under `ip netns exec NODE`
// (TestMain dispatches on speakerChildEnv), so every socket the speaker
// opens is in the node namespace. The child is also what lets the graceful
// restart test SIGKILL and restart "the agent" for real. The parent drives
// it over stdin/stdout with one JSON line per command.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const speakerChildEnv = "FEDMESH_BGP_SPEAKER_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(speakerChildEnv) == "1" {
		os.Exit(speakerChild(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// requireRoot skips on a laptop but fails under CI, where these tests must run.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (network namespaces); CI=true so it must run")
	}
	t.Skip("needs root for network namespaces; run as root or with CI=true")
}

// requireTools checks the real routers are installed (`make deps`).
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat(tool); err2 == nil {
				continue
			}
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (run make deps); CI=true so this test must run", tool)
			}
			t.Skipf("%s not installed; run make deps", tool)
		}
	}
}

func randomTag() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ns is a network namespace the test created.
type ns string

func newNS(t testing.TB, tag, role string) ns {
	t.Helper()
	n := ns("fmbgp-" + tag + "-" + role)
	run(t, "ip", "netns", "add", string(n))
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", string(n)).Run() })
	n.run(t, "ip", "link", "set", "lo", "up")
	return n
}

func (n ns) run(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", string(n)}, args...)...)
}

func (n ns) try(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", string(n)}, args...)...).CombinedOutput()
	return string(out), err
}

// link joins a and b with a veth pair and gives each end its addresses.
func link(t testing.TB, a ns, aName string, aAddrs []string, b ns, bName string, bAddrs []string) {
	t.Helper()
	run(t, "ip", "link", "add", aName, "netns", string(a), "type", "veth", "peer", "name", bName, "netns", string(b))
	for _, x := range []struct {
		n     ns
		dev   string
		addrs []string
	}{{a, aName, aAddrs}, {b, bName, bAddrs}} {
		for _, addr := range x.addrs {
			args := []string{"ip", "addr", "add", addr, "dev", x.dev}
			if strings.Contains(addr, ":") {
				args = append(args, "nodad")
			}
			x.n.run(t, args...)
		}
		x.n.run(t, "ip", "link", "set", x.dev, "up")
	}
}

func (n ns) forward(t testing.TB) {
	n.run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
}

// lab is: host --- tor --- node --- pod. The ToR runs BIRD or FRR, the node
// the fedmesh speaker; host and pod only answer pings.
type lab struct {
	tag                  string
	tor, node, pod, host ns
}

const (
	torV4, nodeV4   = "198.18.0.1", "198.18.0.2"
	torV6, nodeV6   = "fd18:0:0:1::1", "fd18:0:0:1::2"
	podV4, podV6    = "10.244.1.10", "fd00:244:1::10"
	podCIDR4        = "10.244.1.0/24"
	podCIDR6        = "fd00:244:1::/64"
	hostV4, hostV6  = "198.18.0.6", "fd18:0:0:2::2"
	torASN, nodeASN = 65000, 65010
)

func newLab(t testing.TB) *lab {
	t.Helper()
	requireRoot(t)
	l := &lab{tag: randomTag()}
	l.tor, l.node = newNS(t, l.tag, "tor"), newNS(t, l.tag, "node")
	l.pod, l.host = newNS(t, l.tag, "pod"), newNS(t, l.tag, "host")
	link(t, l.tor, "tor-node", []string{torV4 + "/30", torV6 + "/64"}, l.node, "node-tor", []string{nodeV4 + "/30", nodeV6 + "/64"})
	link(t, l.tor, "tor-host", []string{"198.18.0.5/30", "fd18:0:0:2::1/64"}, l.host, "host-tor", []string{hostV4 + "/30", hostV6 + "/64"})
	link(t, l.node, "node-pod", []string{"10.244.1.1/24", "fd00:244:1::1/64"}, l.pod, "pod-node", []string{podV4 + "/24", podV6 + "/64"})
	l.tor.forward(t)
	l.node.forward(t)
	l.host.run(t, "ip", "route", "add", "default", "via", "198.18.0.5")
	l.host.run(t, "ip", "-6", "route", "add", "default", "via", "fd18:0:0:2::1")
	l.node.run(t, "ip", "route", "add", "default", "via", torV4)
	l.node.run(t, "ip", "-6", "route", "add", "default", "via", torV6)
	l.pod.run(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	l.pod.run(t, "ip", "-6", "route", "add", "default", "via", "fd00:244:1::1")
	return l
}

// fib returns the ToR kernel's route for prefix ("" if none).
func (n ns) fib(t testing.TB, prefix string) string {
	fam := "-4"
	if strings.Contains(prefix, ":") {
		fam = "-6"
	}
	return strings.TrimSpace(n.run(t, "ip", fam, "route", "show", prefix))
}

func (n ns) ping(dst string) error { // iputils-ping must be installed (make deps)
	_, err := n.try("ping", "-c", "1", "-W", "1", dst)
	return err
}

// eventually polls cond until it returns "" or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		if last = cond(); last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// daemon is a process the test started; Stop kills it by PID.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startDaemon(t testing.TB, name string, logFile string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if logFile != "" {
		f, err := os.Create(logFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.done) }()
	t.Cleanup(d.Stop)
	return d
}

func (d *daemon) Stop() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
}

func (d *daemon) Alive() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// bird is a BIRD 2 instance in a namespace.
type bird struct {
	*daemon
	sock string
}

func startBird(t testing.TB, n ns, conf string) *bird {
	t.Helper()
	requireTools(t, "bird", "birdc")
	dir := t.TempDir()
	cf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &bird{sock: filepath.Join(dir, "bird.ctl")}
	b.daemon = startDaemon(t, "bird", filepath.Join(dir, "bird.log"),
		"ip", "netns", "exec", string(n), "bird", "-f", "-c", cf, "-s", b.sock, "-P", filepath.Join(dir, "bird.pid"))
	eventually(t, 10*time.Second, "bird control socket", func() string {
		if _, err := b.cli("show", "status"); err != nil {
			if !b.Alive() {
				log, _ := os.ReadFile(filepath.Join(dir, "bird.log"))
				t.Fatalf("bird exited: %s", log)
			}
			return err.Error()
		}
		return ""
	})
	return b
}

func (b *bird) cli(args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	return string(out), err
}

// frr is zebra + bgpd in a namespace.
type frr struct {
	zebra, bgpd *daemon
	dir         string
}

func startFRR(t testing.TB, n ns, bgpdConf string) *frr {
	t.Helper()
	requireTools(t, "/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh")
	// FRR drops to user frr: the dir (not t.TempDir, whose parents are 0700)
	// must be reachable and owned by it.
	dir, err := os.MkdirTemp("", "fedmesh-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	u, err := user.Lookup("frr")
	if err != nil {
		t.Fatalf("look up user frr (installed with the frr package): %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for name, body := range map[string]string{"zebra.conf": "hostname tor\n", "bgpd.conf": bgpdConf} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
		_ = os.Chown(p, uid, gid)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	common := func(daemon string) []string {
		return []string{"ip", "netns", "exec", string(n), "/usr/lib/frr/" + daemon, "-u", "frr", "-g", "frr",
			"-f", filepath.Join(dir, daemon+".conf"), "-i", filepath.Join(dir, daemon+".pid"),
			"-z", filepath.Join(dir, "zserv.api"), "--vty_socket", dir}
	}
	f := &frr{dir: dir}
	f.zebra = startDaemon(t, "zebra", filepath.Join(dir, "zebra.log"), common("zebra")...)
	eventually(t, 10*time.Second, "zebra socket", func() string {
		if _, err := os.Stat(filepath.Join(dir, "zserv.api")); err != nil {
			return err.Error()
		}
		return ""
	})
	f.bgpd = startDaemon(t, "bgpd", filepath.Join(dir, "bgpd.log"), common("bgpd")...)
	eventually(t, 10*time.Second, "bgpd vty", func() string {
		if _, err := f.vtysh("show bgp summary"); err != nil {
			return err.Error()
		}
		return ""
	})
	return f
}

func (f *frr) vtysh(cmd string) (string, error) {
	out, err := exec.Command("vtysh", "--vty_socket", f.dir, "-c", cmd).CombinedOutput()
	return string(out), err
}

// speakerProc is the fedmesh speaker running in the node namespace.
type speakerProc struct {
	*daemon
	in  io.WriteCloser
	out *bufio.Reader
}

type childReply struct {
	Actions int          `json:"actions"`
	TookNS  int64        `json:"took_ns,omitempty"` // time spent inside Apply/SetHealthy
	Error   string       `json:"error,omitempty"`
	Status  []PeerStatus `json:"status,omitempty"`
}

func startSpeaker(t testing.TB, n ns, d Desired) *speakerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", string(n), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), speakerChildEnv+"=1")
	cmd.Stderr = &prefixWriter{t: t}
	in, _ := cmd.StdinPipe()
	outPipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start speaker: %v", err)
	}
	p := &speakerProc{daemon: &daemon{name: "speaker", cmd: cmd, done: make(chan struct{})}, in: in, out: bufio.NewReader(outPipe)}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Stop)
	if r := p.call(t, "apply", d); r.Error != "" {
		t.Fatalf("speaker apply: %s", r.Error)
	}
	return p
}

// prefixWriter forwards the child's log to the test log.
type prefixWriter struct{ t testing.TB }

func (w *prefixWriter) Write(b []byte) (int, error) {
	if os.Getenv("FEDMESH_BGP_TEST_VERBOSE") != "" {
		w.t.Logf("speaker: %s", strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (p *speakerProc) call(t testing.TB, cmd string, arg any) childReply {
	t.Helper()
	line := cmd
	if arg != nil {
		b, err := json.Marshal(arg)
		if err != nil {
			t.Fatal(err)
		}
		line += " " + string(b)
	}
	if _, err := io.WriteString(p.in, line+"\n"); err != nil {
		t.Fatalf("speaker %s: %v", cmd, err)
	}
	resp, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("speaker %s: read reply: %v (did it crash?)", cmd, err)
	}
	var r childReply
	if err := json.Unmarshal([]byte(resp), &r); err != nil {
		t.Fatalf("speaker %s: decode %q: %v", cmd, resp, err)
	}
	return r
}

func (p *speakerProc) status(t testing.TB) []PeerStatus { return p.call(t, "status", nil).Status }

// speakerChild is the child's main: a Speaker driven by commands on in.
func speakerChild(in io.Reader, out io.Writer) int {
	level := slog.LevelInfo
	if os.Getenv("FEDMESH_BGP_TEST_VERBOSE") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	s := New(WithLogger(log))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	enc := json.NewEncoder(out)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		var r childReply
		var err error
		var acts []Action
		switch cmd {
		case "apply":
			var d Desired
			if err = json.Unmarshal([]byte(arg), &d); err == nil {
				start := time.Now()
				acts, err = s.Apply(ctx, d)
				r.TookNS = int64(time.Since(start))
			}
		case "healthy":
			var h bool
			if err = json.Unmarshal([]byte(arg), &h); err == nil {
				acts, err = s.SetHealthy(ctx, h)
			}
		case "status":
			r.Status, err = s.Status(ctx)
		case "stop": // a deliberate stop, as an agent on SIGTERM
			cancel()
			err = <-ran
		default:
			err = errors.New("unknown command " + cmd)
		}
		r.Actions = len(acts)
		if err != nil {
			r.Error = err.Error()
		}
		if err := enc.Encode(r); err != nil {
			return 1
		}
	}
	return 0 // stdin closed: exit without cancelling, like a dying agent
}

func statusOf(st []PeerStatus, addr string) (PeerStatus, bool) {
	for _, s := range st {
		if s.Address.String() == addr {
			return s, true
		}
	}
	return PeerStatus{}, false
}

func established(p *speakerProc, t testing.TB, addrs ...string) func() string {
	return func() string {
		st := p.status(t)
		for _, a := range addrs {
			s, ok := statusOf(st, a)
			if !ok || s.State != StateEstablished {
				return fmt.Sprintf("peer %s: %+v", a, s)
			}
		}
		return ""
	}
}
