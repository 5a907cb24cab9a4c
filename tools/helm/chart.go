package helm

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Chart is the fedmesh chart, embedded so a fedlab binary installs the
// chart it was built with, wherever it runs.
//
//go:embed all:fedmesh
var Chart embed.FS

// WriteChart writes the chart into dir/fedmesh and returns that path.
func WriteChart(dir string) (string, error) {
	err := fs.WalkDir(Chart, "fedmesh", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := Chart.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("write the fedmesh chart into %s: %w", dir, err)
	}
	return filepath.Join(dir, "fedmesh"), nil
}
