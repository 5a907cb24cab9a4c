package config

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultServer is where fedctl looks for the control plane when no flag,
// environment variable or context names one: the control plane's default
// gRPC address.
const DefaultServer = "127.0.0.1:9000"

// Environment variables fedctl reads; each sits between its flag and the
// context.
const (
	EnvContext = "FEDMESH_CONTEXT"
	EnvServer  = "FEDMESH_SERVER"
	EnvCA      = "FEDMESH_CA"
	EnvCert    = "FEDMESH_CERT"
	EnvKey     = "FEDMESH_KEY"
)

// Overrides is what the flags or the environment say; a zero field says
// nothing, so the next layer decides it.
type Overrides struct {
	Context     string
	Servers     []string
	CA          string
	Cert, Key   string
	InsecureDev bool
}

// FromEnv reads the environment layer.
func FromEnv(getenv func(string) string) Overrides {
	return Overrides{
		Context: getenv(EnvContext),
		Servers: SplitServers(getenv(EnvServer)),
		CA:      getenv(EnvCA),
		Cert:    getenv(EnvCert),
		Key:     getenv(EnvKey),
	}
}

// SplitServers reads a comma-separated server list, dropping empty items.
func SplitServers(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// Settings is how fedctl reaches the control plane once every layer has
// spoken.
type Settings struct {
	// Context is the context used ("" when none).
	Context     string
	Servers     []string
	InsecureDev bool
	CA          string
	Cert, Key   string
	// CAFrom and CertFrom name where CA and Cert/Key came from ("--ca",
	// "FEDMESH_CA", `context "lab"`), for messages about loading them.
	CAFrom, CertFrom string
}

// ErrNoCredentials says how to give fedctl credentials.
var ErrNoCredentials = errors.New("no credentials for the control plane: give --ca, --cert and --key (env FEDMESH_CA, FEDMESH_CERT, FEDMESH_KEY), or use a context ('fedctl config set-context'), or --insecure-dev against a development control plane; an admin certificate comes from 'fedctl ca issue-admin'")

// layer is one source of settings with the names a user knows it by.
type layer struct {
	o                                     Overrides
	caName, certName, keyName, insecureNm string
}

// Resolve decides each setting by precedence: flag > env > context >
// default. The context is the one --context or FEDMESH_CONTEXT names, else
// the file's current one; naming a context the file lacks is an
// *UnknownContextError. Plaintext versus TLS is decided by the highest
// layer that says anything about it (--insecure-dev, or a CA, certificate
// or key), so `--insecure-dev` beats a TLS context and `--ca` beats an
// insecure-dev one. A certificate and its key always come from the same
// layer: a pair mixed from two layers would not match.
func Resolve(f *File, flags, env Overrides) (Settings, error) {
	layers := []layer{
		{o: flags, caName: "--ca", certName: "--cert", keyName: "--key", insecureNm: "--insecure-dev"},
		{o: env, caName: EnvCA, certName: EnvCert, keyName: EnvKey},
	}
	var s Settings
	name := firstNonEmpty(flags.Context, env.Context, f.CurrentContext)
	if name != "" {
		c, err := f.Context(name)
		if err != nil {
			if flags.Context == "" && env.Context == "" {
				return Settings{}, fmt.Errorf("current context: %w", err)
			}
			return Settings{}, err
		}
		s.Context = name
		from := fmt.Sprintf("context %q", name)
		layers = append(layers, layer{
			o:      Overrides{Servers: c.Servers, CA: c.CA, Cert: c.Cert, Key: c.Key, InsecureDev: c.InsecureDev},
			caName: from, certName: from, keyName: from, insecureNm: from,
		})
	}

	s.Servers = []string{DefaultServer}
	for _, l := range layers {
		if len(l.o.Servers) > 0 {
			s.Servers = l.o.Servers
			break
		}
	}

	for _, l := range layers {
		tls := l.o.CA != "" || l.o.Cert != "" || l.o.Key != ""
		if !l.o.InsecureDev && !tls {
			continue
		}
		if l.o.InsecureDev && tls {
			// Only flags can say both: env has no insecure-dev and a
			// context saying both does not load.
			return Settings{}, fmt.Errorf("%s excludes %s, %s and %s", l.insecureNm, l.caName, l.certName, l.keyName)
		}
		s.InsecureDev = l.o.InsecureDev
		break
	}
	if s.InsecureDev {
		return s, nil
	}
	for _, l := range layers {
		if l.o.CA != "" {
			s.CA, s.CAFrom = l.o.CA, l.caName
			break
		}
	}
	for _, l := range layers {
		if l.o.Cert == "" && l.o.Key == "" {
			continue
		}
		if l.o.Cert == "" || l.o.Key == "" {
			return Settings{}, fmt.Errorf("give %s and %s together", l.certName, l.keyName)
		}
		s.Cert, s.Key, s.CertFrom = l.o.Cert, l.o.Key, l.certName
		break
	}
	return s, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
