package policy

import "testing"

// TestMatchDomainNameUpstreamExamples holds MatchDomainName to every
// example of the upstream DomainName doc comment
// (sigs.k8s.io/network-policy-api v0.3.0 apis/v1alpha2), plus the
// readings doc.go states (case, trailing dot, partial labels).
func TestMatchDomainNameUpstreamExamples(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		// `kubernetes.io` matches only `kubernetes.io`.
		{"kubernetes.io", "kubernetes.io", true},
		{"kubernetes.io", "www.kubernetes.io", false},
		{"kubernetes.io", "blog.kubernetes.io", false},
		{"kubernetes.io", "my-kubernetes.io", false},
		{"kubernetes.io", "wikipedia.org", false},
		// `blog.kubernetes.io` matches only "blog.kubernetes.io".
		{"blog.kubernetes.io", "blog.kubernetes.io", true},
		{"blog.kubernetes.io", "www.kubernetes.io", false},
		{"blog.kubernetes.io", "kubernetes.io", false},
		// `*.kubernetes.io` matches subdomains: one or more entire labels.
		{"*.kubernetes.io", "www.kubernetes.io", true},
		{"*.kubernetes.io", "blog.kubernetes.io", true},
		{"*.kubernetes.io", "latest.blog.kubernetes.io", true},
		{"*.kubernetes.io", "kubernetes.io", false},
		{"*.kubernetes.io", "wikipedia.org", false},
		// No partial labels.
		{"*.kubernetes.io", "my-kubernetes.io", false},
		{"*.kubernetes.io", ".kubernetes.io", false},
		{"*.kubernetes.io", "x.my-kubernetes.io", false},
		// Case-insensitive, one trailing dot ignored on either side.
		{"Kubernetes.IO", "kubernetes.io", true},
		{"kubernetes.io", "KUBERNETES.io.", true},
		{"kubernetes.io.", "kubernetes.io", true},
		{"*.Kubernetes.io", "WWW.kubernetes.IO.", true},
		{"*.kubernetes.io.", "www.kubernetes.io", true},
		{"kubernetes.io", "kubernetes.io..", false},
		// Degenerate input matches nothing.
		{"", "", false},
		{"kubernetes.io", "", false},
		{"*.", "a.", false},
		// The wildcard only as a whole leading label.
		{"*.io", "kubernetes.io", true},
		{"w*.kubernetes.io", "www.kubernetes.io", false},
	}
	for _, tc := range tests {
		if got := MatchDomainName(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchDomainName(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestDirectionRulesMatchesNameAnyRule(t *testing.T) {
	d := DirectionRules{Names: []NameRule{{Names: []string{"api.example.com"}}, {Names: []string{"*.corp.example"}}}}
	for name, want := range map[string]bool{"api.example.com": true, "a.b.corp.example": true, "corp.example": false,
		"www.example.com": false} {
		if got := d.MatchesName(name); got != want {
			t.Errorf("MatchesName(%q) = %v, want %v", name, got, want)
		}
	}
	if (DirectionRules{}).MatchesName("api.example.com") {
		t.Error("no name rules match a name")
	}
}
