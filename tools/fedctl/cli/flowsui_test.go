package cli

import (
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/controlplane/auth"
)

func TestFlowsUIPrintsAOneTimeSignInLinkForPeopleOnly(t *testing.T) {
	p := startTLSPlane(t)
	out, errOut, err := p.fedctl(t, auth.Admin(), "flows", "ui")
	if err != nil {
		t.Fatalf("fedctl flows ui: %v\n%s", err, errOut)
	}
	if !strings.HasPrefix(out, "https://127.0.0.1:") || !strings.Contains(out, "/login?code=") || !strings.Contains(out, "valid once") {
		t.Errorf("fedctl flows ui printed %q, want a one-time https sign-in link", out)
	}
	if _, errOut, err := p.fedctl(t, auth.Node("a", "n1"), "flows", "ui"); err == nil || !strings.Contains(errOut+err.Error(), "PermissionDenied") {
		t.Errorf("a node's fedctl flows ui: %v %s, want PermissionDenied", err, errOut)
	}
}
