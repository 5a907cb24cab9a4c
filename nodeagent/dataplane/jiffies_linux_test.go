package dataplane

import (
	"testing"
	"time"
)

func TestTickForPicksTheHZThatExplainsTheSamples(t *testing.T) {
	for _, c := range []struct {
		name    string
		dj, dns uint64
		want    uint64
	}{
		{"HZ 250 over 100 ms", 25, 100_000_000, 4_000_000},
		{"HZ 1000 over 50 ms", 50, 50_000_000, 1_000_000},
		{"HZ 300 over 100 ms", 30, 100_000_000, 3_333_333},
		{"HZ 100 over 50 ms", 5, 50_000_000, 10_000_000},
		{"HZ 250, samples a tick apart in phase", 13, 51_000_000, 4_000_000},
		{"HZ 250, the last sample's jiffies a tick late", 13, 56_000_003, 4_000_000},
		{"HZ 250 a tick and a half off explains nothing", 12, 54_000_000, 0},
		{"one jiffy says nothing", 1, 4_000_000, 0},
		{"no HZ explains 25 jiffies in 300 ms", 25, 300_000_000, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := tickFor(c.dj, c.dns); got != c.want {
				t.Errorf("tickFor(%d, %d) = %d, want %d", c.dj, c.dns, got, c.want)
			}
		})
	}
}

// The programs' clock (jiffies × tick + base) must stay on the coarse
// monotonic scale the Go side ages conntrack and learned names on.
func TestJiffyClockTracksTheCoarseMonotonicClock(t *testing.T) {
	requireKernel(t)
	tick, base, err := jiffyClock()
	if err != nil {
		t.Fatal(err)
	}
	s, err := newJiffySampler()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	for range 5 {
		j, coarse, err := s.sample()
		if err != nil {
			t.Fatal(err)
		}
		now := j*tick + base
		// A tick apart at most, and a little: the coarse clock moves when
		// timekeeping runs in the tick, a few microseconds after jiffies
		// (seen: 4,002,442 ns at HZ 250 on a loaded host).
		if d, slack := int64(now-coarse), int64(tick+tick/4); d < -slack || d > slack {
			t.Fatalf("jiffies clock %d, coarse clock %d: %d ns apart, more than a tick (%d ns)", now, coarse, d, tick)
		}
		if d := int64(monotonicNow() - now); d < 0 || d > int64(2*tick)+int64(50*time.Millisecond) {
			t.Fatalf("jiffies clock %d is %d ns away from CLOCK_MONOTONIC", now, d)
		}
		time.Sleep(30 * time.Millisecond)
	}
}
