package main

import (
	"runtime/debug"
	"testing"
)

// currentGCPercent reads the runtime's GC percent without changing it.
func currentGCPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestGCPercentFlagAndGOGC(t *testing.T) {
	defer debug.SetGCPercent(currentGCPercent())
	for _, tc := range []struct {
		name      string
		gogc      string
		pct       int
		flagGiven bool
		want      int // the runtime's setting after; 0: an error
	}{
		{name: "default applies", pct: defaultGCPercent, want: defaultGCPercent},
		{name: "GOGC in the environment wins over the default", gogc: "150", pct: defaultGCPercent, want: 150},
		{name: "the flag given wins over GOGC", gogc: "150", pct: 300, flagGiven: true, want: 300},
		{name: "too low is refused", pct: 10, flagGiven: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOGC", tc.gogc)
			debug.SetGCPercent(150) // what the runtime read from GOGC, or any prior setting
			if tc.gogc == "" {
				debug.SetGCPercent(100)
			}
			before := currentGCPercent()
			err := setGCPercent(tc.pct, tc.flagGiven)
			if tc.want == 0 {
				if err == nil || currentGCPercent() != before {
					t.Fatalf("err %v, GC percent %d (was %d)", err, currentGCPercent(), before)
				}
				return
			}
			if err != nil || currentGCPercent() != tc.want {
				t.Fatalf("err %v, GC percent %d, want %d", err, currentGCPercent(), tc.want)
			}
		})
	}
}
