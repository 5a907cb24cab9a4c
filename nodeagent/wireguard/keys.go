package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrKeyFileMode is returned when a key file is readable by anyone but its
// owner: the private key must be treated as leaked.
var ErrKeyFileMode = errors.New("key file must have mode 0600")

// keyFileMode is the only mode a private key file may have.
const keyFileMode fs.FileMode = 0o600

// LoadOrCreateKey returns the private key stored at path, generating and
// storing a new one (mode 0600) the first time. A node keeps its key across
// restarts so peers need not learn a new one every time the agent starts.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	k, err := LoadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	k, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate wireguard private key: %w", err)
	}
	if err := SaveKey(path, k); err != nil {
		return wgtypes.Key{}, err
	}
	return k, nil
}

// LoadKey reads a base64 private key from path. It refuses a file whose mode
// lets anyone but the owner read it.
func LoadKey(path string) (wgtypes.Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read wireguard key %s: %w", path, err)
	}
	if st.Mode().Perm() != keyFileMode {
		return wgtypes.Key{}, fmt.Errorf("read wireguard key %s: mode is %#o; chmod 600 it if it was never exposed, else delete it to generate a new key: %w", path, st.Mode().Perm(), ErrKeyFileMode)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read wireguard key %s: %w", path, err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("parse wireguard key %s: %w", path, err)
	}
	return k, nil
}

// SaveKey writes k to path atomically with mode 0600: a reader sees either the
// old key or the new one, never a truncated file.
func SaveKey(path string, k wgtypes.Key) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".wgkey-*")
	if err != nil {
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(keyFileMode); err != nil {
		f.Close()
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	return nil
}
