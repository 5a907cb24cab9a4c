package lab

import "testing"

// Mount points in /proc/self/mountinfo escape blanks and backslashes; a
// mount under the lab's dirs must be found whatever its name holds.
func TestMountinfoEscapesAreUndone(t *testing.T) {
	for in, want := range map[string]string{
		`/var/lib/fedlab/kl/n1/kubelet`:          `/var/lib/fedlab/kl/n1/kubelet`,
		`/var/lib/fedlab/kl/pods/a\040b/volumes`: `/var/lib/fedlab/kl/pods/a b/volumes`,
		`/run/fedlab/kl/x\011tab\134slash`:       "/run/fedlab/kl/x\ttab\\slash",
		`/trailing\04`:                           `/trailing\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnmountUnderRefusesTheRoot(t *testing.T) {
	for _, dir := range []string{"", "/"} {
		if err := unmountUnder(dir); err == nil {
			t.Errorf("unmountUnder(%q) = nil, want a refusal", dir)
		}
	}
}
