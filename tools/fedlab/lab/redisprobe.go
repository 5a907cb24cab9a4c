package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisProbeOptions configure `fedlab redis-probe`, a real Redis client
// (go-redis) run inside a pod: it resolves the service through the pod's
// resolv.conf (the node-local DNS) and connects through the ClusterSetIP.
type RedisProbeOptions struct {
	Addr string
	// Interval between probes; Count probes (0: until ctx ends).
	Interval time.Duration
	Count    int
	// Timeout bounds a connect and a command.
	Timeout time.Duration
	// NewConn opens a new connection for every probe (each one a new
	// choice of backend); otherwise one client keeps its connection and
	// opens a new one only after an error, as an application does.
	NewConn bool
}

// RedisProbe runs the probes and writes one line per probe:
//
//	<unix nanoseconds> ok <cluster> <pod>
//	<unix nanoseconds> err <message>
//
// It returns an error when the last probe failed.
func RedisProbe(ctx context.Context, w io.Writer, o RedisProbeOptions) error {
	opts := &redis.Options{
		Addr: o.Addr, DialTimeout: o.Timeout, ReadTimeout: o.Timeout, WriteTimeout: o.Timeout,
		// One connection, no retries: every failure shows, and the next
		// command after one dials anew.
		PoolSize: 1, MaxRetries: -1, Protocol: 2, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	var client *redis.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	var last error
	for i := 0; o.Count == 0 || i < o.Count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return last
			case <-time.After(o.Interval):
			}
		}
		if client == nil || o.NewConn {
			if client != nil {
				client.Close()
			}
			client = redis.NewClient(opts)
		}
		vals, err := client.MGet(ctx, RedisClusterKey, RedisPodKey).Result()
		now := time.Now().UnixNano()
		if err == nil && (len(vals) != 2 || vals[0] == nil) {
			err = errors.New("the instance has no identity keys")
		}
		last = err
		if err != nil {
			fmt.Fprintf(w, "%d err %s\n", now, strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Fprintf(w, "%d ok %v %v\n", now, vals[0], vals[1])
	}
	return last
}

// RedisAnswer is one line of RedisProbe's output.
type RedisAnswer struct {
	At       time.Time
	OK       bool
	Cluster  string
	Pod, Err string
}

// ParseRedisAnswer reads one line of RedisProbe's output.
func ParseRedisAnswer(line string) (RedisAnswer, error) {
	f := strings.SplitN(strings.TrimSpace(line), " ", 3)
	if len(f) < 2 {
		return RedisAnswer{}, fmt.Errorf("redis probe line %q: want <ns> ok|err and the rest", line)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return RedisAnswer{}, fmt.Errorf("redis probe line %q: %w", line, err)
	}
	a := RedisAnswer{At: time.Unix(0, ns)}
	rest := ""
	if len(f) == 3 {
		rest = f[2]
	}
	switch f[1] {
	case "ok":
		a.OK = true
		a.Cluster, a.Pod, _ = strings.Cut(rest, " ")
	case "err":
		a.Err = rest
	default:
		return RedisAnswer{}, fmt.Errorf("redis probe line %q: want ok or err", line)
	}
	return a, nil
}

// RedisClient is a RedisProbe running in a pod, its answers read as they
// come.
type RedisClient struct {
	Answers <-chan RedisAnswer
	stop    func() error
}

// Stop ends the probe and waits for it.
func (c *RedisClient) Stop() error { return c.stop() }

// StartRedisClient runs `fedlab redis-probe` in a pod against the redis
// service's clusterset name, a probe every interval until Stop.
func (l *Lab) StartRedisClient(ctx context.Context, pod string, interval time.Duration, newConn bool) (*RedisClient, error) {
	ctx, cancel := context.WithCancel(ctx)
	args := []string{l.bin("fedlab"), "redis-probe", "--addr", fmt.Sprintf("%s:%d", RedisName, RedisPort),
		"--interval", interval.String(), "--timeout", "300ms"}
	if newConn {
		args = append(args, "--new-conn")
	}
	cmd, err := l.Topo.PodCommand(ctx, pod, args...)
	if err != nil {
		cancel()
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start the redis client in %s: %w", pod, err)
	}
	ch := make(chan RedisAnswer, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, err := ParseRedisAnswer(sc.Text()); err == nil {
				select {
				case ch <- a:
				default: // a reader that fell behind loses answers, never blocks the probe
				}
			}
		}
	}()
	return &RedisClient{Answers: ch, stop: func() error {
		cancel()
		<-done
		_ = cmd.Wait()
		return nil
	}}, nil
}

// RedisGet runs one probe on a new connection from a pod and returns the
// answer.
func (l *Lab) RedisGet(ctx context.Context, pod string) (RedisAnswer, error) {
	cmd, err := l.Topo.PodCommand(ctx, pod, l.bin("fedlab"), "redis-probe", "--addr", fmt.Sprintf("%s:%d", RedisName, RedisPort),
		"--count", "1", "--timeout", "1s", "--new-conn")
	if err != nil {
		return RedisAnswer{}, err
	}
	out, _ := cmd.Output()
	a, err := ParseRedisAnswer(string(out))
	if err != nil {
		return RedisAnswer{}, err
	}
	if !a.OK {
		return a, fmt.Errorf("redis from %s: %s", pod, a.Err)
	}
	return a, nil
}
