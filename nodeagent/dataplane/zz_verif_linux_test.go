package dataplane

import "testing"

func TestZZVerifiedInsns(t *testing.T) {
	requireKernel(t)
	dp, _ := newEBPF(t, "")
	for _, n := range []string{"fm_from_pod", "fm_to_pod"} {
		info, err := dp.coll.Programs[n].Info()
		if err != nil {
			t.Fatal(err)
		}
		vi, _ := info.VerifiedInstructions()
		t.Logf("%s: verified %d", n, vi)
	}
}
