package wireguard

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestKeyIsGeneratedOnceAndStoredOwnerOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wg.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %#o, want 0600", st.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Fatal("second LoadOrCreateKey generated a new key instead of loading the stored one")
	}
}

func TestLoadKeyRejects(t *testing.T) {
	good := testKey(7).String() + "\n"
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		wantIs  error
	}{
		{name: "group readable file", content: good, mode: 0o640, wantIs: ErrKeyFileMode},
		{name: "world readable file", content: good, mode: 0o644, wantIs: ErrKeyFileMode},
		{name: "garbage", content: "not a key", mode: 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wg.key")
			if err := os.WriteFile(path, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // umask may have narrowed it
				t.Fatal(err)
			}
			_, err := LoadOrCreateKey(path)
			if err == nil {
				t.Fatal("loaded a key it should refuse")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("err = %v, want %v", err, tt.wantIs)
			}
		})
	}
}

func TestSaveKeyReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wg.key")
	if err := SaveKey(path, testKey(1)); err != nil {
		t.Fatal(err)
	}
	if err := SaveKey(path, testKey(2)); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k != testKey(2) {
		t.Fatal("SaveKey did not replace the key")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d files, want only the key (temp files leaked)", len(entries))
	}
}
