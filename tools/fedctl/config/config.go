// Package config owns fedctl's client configuration: the file of named
// contexts (where it lives, its format, how it is written safely) and how
// flags and environment variables override the chosen context
// (flag > env > context > default, as kubectl does). fedctl and fedlab are
// its only writers; both go through Update.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"go.yaml.in/yaml/v3"
)

// File is the config file: named contexts and the one used when neither
// --context nor FEDMESH_CONTEXT names another.
type File struct {
	CurrentContext string    `yaml:"current-context,omitempty" json:"currentContext,omitempty"`
	Contexts       []Context `yaml:"contexts,omitempty" json:"contexts,omitempty"`
}

// Context is one control plane and the credentials that reach it.
type Context struct {
	Name string `yaml:"name" json:"name"`
	// Servers are the replicas' host:port, tried in order.
	Servers []string `yaml:"servers,omitempty" json:"servers,omitempty"`
	// CA, Cert and Key are absolute paths: the CA verifying the replicas
	// and this client's certificate and key.
	CA   string `yaml:"ca,omitempty" json:"ca,omitempty"`
	Cert string `yaml:"cert,omitempty" json:"cert,omitempty"`
	Key  string `yaml:"key,omitempty" json:"key,omitempty"`
	// InsecureDev talks plaintext (development control planes only); it
	// excludes CA, Cert and Key.
	InsecureDev bool `yaml:"insecure-dev,omitempty" json:"insecureDev,omitempty"`
}

// Validate checks a context on its own: a name, no empty server, one
// transport (plaintext or TLS), a certificate only with its key.
func (c Context) Validate() error {
	if c.Name == "" {
		return errors.New("context has no name")
	}
	if strings.ContainsFunc(c.Name, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("context name %q: may not contain spaces or control characters", c.Name)
	}
	if slices.Contains(c.Servers, "") {
		return fmt.Errorf("context %q: empty server address", c.Name)
	}
	if c.InsecureDev && (c.CA != "" || c.Cert != "" || c.Key != "") {
		return fmt.Errorf("context %q: insecure-dev excludes ca, cert and key", c.Name)
	}
	if (c.Cert == "") != (c.Key == "") {
		return fmt.Errorf("context %q: give cert and key together", c.Name)
	}
	return nil
}

// Names lists the contexts' names in file order.
func (f *File) Names() []string {
	names := make([]string, len(f.Contexts))
	for i, c := range f.Contexts {
		names[i] = c.Name
	}
	return names
}

// Context returns the named context or an *UnknownContextError.
func (f *File) Context(name string) (Context, error) {
	for _, c := range f.Contexts {
		if c.Name == name {
			return c, nil
		}
	}
	return Context{}, &UnknownContextError{Name: name, Known: f.Names()}
}

// Set adds c or replaces the context of the same name. The first context
// of a file without a current one becomes current, so a new user's first
// context works without a use-context.
func (f *File) Set(c Context) {
	if f.CurrentContext == "" {
		f.CurrentContext = c.Name
	}
	for i := range f.Contexts {
		if f.Contexts[i].Name == c.Name {
			f.Contexts[i] = c
			return
		}
	}
	f.Contexts = append(f.Contexts, c)
}

// Delete removes the named context, and clears the current context when it
// was that one; an unknown name is an *UnknownContextError.
func (f *File) Delete(name string) error {
	if _, err := f.Context(name); err != nil {
		return err
	}
	f.Contexts = slices.DeleteFunc(f.Contexts, func(c Context) bool { return c.Name == name })
	if f.CurrentContext == name {
		f.CurrentContext = ""
	}
	return nil
}

// Use makes the named context current; an unknown name is an
// *UnknownContextError.
func (f *File) Use(name string) error {
	if _, err := f.Context(name); err != nil {
		return err
	}
	f.CurrentContext = name
	return nil
}

// validate checks every context and that names are unique. A current
// context that names no context is not an error here, so use-context can
// repair the file; Resolve reports it when it is used.
func (f *File) validate() error {
	seen := map[string]bool{}
	for _, c := range f.Contexts {
		if err := c.Validate(); err != nil {
			return err
		}
		if seen[c.Name] {
			return fmt.Errorf("context %q appears twice", c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

// UnknownContextError names a context the file does not have and the ones
// it has.
type UnknownContextError struct {
	Name  string
	Known []string
}

func (e *UnknownContextError) Error() string {
	if len(e.Known) == 0 {
		return fmt.Sprintf("unknown context %q: there are no contexts; create one with 'fedctl config set-context NAME --server HOST:PORT --ca FILE --cert FILE --key FILE'", e.Name)
	}
	return fmt.Sprintf("unknown context %q: known contexts are %s", e.Name, strings.Join(e.Known, ", "))
}

// Path is the config file: $XDG_CONFIG_HOME/fedmesh/config.yaml, or
// ~/.config/fedmesh/config.yaml when XDG_CONFIG_HOME is unset or relative
// (the XDG Base Directory rule). getenv is os.Getenv outside tests.
func Path(getenv func(string) string) (string, error) {
	if dir := getenv("XDG_CONFIG_HOME"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "fedmesh", "config.yaml"), nil
	}
	home := getenv("HOME")
	if home == "" {
		return "", errors.New("locate the fedctl config file: neither XDG_CONFIG_HOME nor HOME is set")
	}
	return filepath.Join(home, ".config", "fedmesh", "config.yaml"), nil
}

// Load reads the config file at path; a missing file is an empty config.
// Unknown keys are errors, so a misspelt key is not silently ignored.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	f, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w (fix or remove the file)", path, err)
	}
	return f, nil
}

func parse(b []byte) (*File, error) {
	f := &File{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return f, nil
}

const header = "# fedctl contexts: edit with 'fedctl config set-context|use-context|delete-context'.\n"

// Update applies change to the config file at path under an exclusive lock
// (so fedctl and fedlab writing at once lose no context), then replaces the
// file atomically, mode 0600, keeping its owner. change returning an error
// leaves the file as it was.
func Update(path string, change func(*File) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create config dir: %w", err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("lock config: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock config %s: %w", path, err)
	}
	f, err := Load(path)
	if err != nil {
		return err
	}
	if err := change(f); err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return err
	}
	var body bytes.Buffer
	body.WriteString(header)
	if len(f.Contexts) == 0 && f.CurrentContext == "" {
		return writeAtomic(path, body.Bytes()) // not "{}"
	}
	enc := yaml.NewEncoder(&body)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	return writeAtomic(path, body.Bytes())
}

// writeAtomic replaces path by a fully written and synced temporary file in
// the same directory, so a crash leaves the old file or the new one.
func writeAtomic(path string, b []byte) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*.yaml")
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file 0600 already; say it, since the file
	// names private keys.
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	// root (sudo fedlab up) rewriting a user's file keeps it the user's.
	if st, err := os.Stat(path); err == nil && os.Geteuid() == 0 {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && (sys.Uid != 0 || sys.Gid != 0) {
			if err := tmp.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
				return fmt.Errorf("write config: keep owner of %s: %w", path, err)
			}
		}
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the rename is durable once the directory is
		d.Close()
	}
	return nil
}
