package bgp

import (
	"reflect"
	"testing"
)

func TestEffectiveCouplesAdvertisementToHealth(t *testing.T) {
	unhealthy := Community(65000<<16 | 666)
	tests := []struct {
		name        string
		community   *Community
		healthy     bool
		wantPlan    []string // from the healthy state to this one
		wantMutated bool
	}{
		{"healthy advertises as desired", nil, true, nil, false},
		{"unhealthy without community withdraws", nil, false, []string{
			"delete-path 10.244.1.0/24", "delete-path fd00:244:1::/64 communities=65000:100",
		}, false},
		{"unhealthy with community de-prefers", &unhealthy, false, []string{
			"add-path 10.244.1.0/24 communities=65000:666",
			"add-path fd00:244:1::/64 communities=65000:100,65000:666",
		}, false},
		{"healthy with community configured advertises plainly", &unhealthy, true, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := validDesired()
			d.UnhealthyCommunity = tt.community
			before := validDesired()
			before.UnhealthyCommunity = tt.community
			healthy := Effective(d, true)
			got := Effective(d, tt.healthy)
			p := plan(Diff(&healthy, &got))
			if !reflect.DeepEqual(p, tt.wantPlan) && !(len(p) == 0 && len(tt.wantPlan) == 0) {
				t.Errorf("plan healthy -> %v:\n got %q\nwant %q", tt.healthy, p, tt.wantPlan)
			}
			if !reflect.DeepEqual(d, before) {
				t.Error("Effective modified its input")
			}
			// Recovery is the exact inverse: back to healthy re-advertises.
			if back := Diff(&got, &healthy); len(back) != len(tt.wantPlan) {
				t.Errorf("recovery plan %q, want %d actions", plan(back), len(tt.wantPlan))
			}
		})
	}
}
