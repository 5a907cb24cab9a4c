package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// table is what a list command prints in table mode; objs are printed
// instead in json/yaml mode.
type table struct {
	header []string
	rows   [][]string
	// notes are lines printed under the table (table output only): what
	// does not fit a cell.
	notes []string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// printItems writes encoded objects in json or yaml mode: one object as
// itself, several as a list.
func (g *globals) printItems(items []json.RawMessage) error {
	var v any = items
	if len(items) == 1 {
		v = items[0]
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if g.output == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintln(g.out, strings.TrimRight(string(b), "\n"))
	return err
}

// print writes objs as JSON or YAML (protojson field names), or t as an
// aligned table.
func (g *globals) print(t *table, objs ...proto.Message) error {
	switch g.output {
	case "json", "yaml":
		var items []json.RawMessage
		for _, o := range objs {
			b, err := protojson.MarshalOptions{Multiline: false}.Marshal(o)
			if err != nil {
				return fmt.Errorf("encode %T: %w", o, err)
			}
			items = append(items, b)
		}
		return g.printItems(items)
	case "table", "":
		w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, strings.Join(t.header, "\t"))
		for _, r := range t.rows {
			fmt.Fprintln(w, strings.Join(r, "\t"))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		for _, n := range t.notes {
			if _, err := fmt.Fprintln(g.out, n); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown output format %q: use table, json or yaml", g.output)
}

func labelString(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "<none>"
	}
	return strings.Join(s, ",")
}

// parseLabels reads k=v pairs from repeated --label flags.
func parseLabels(in []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range in {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}
