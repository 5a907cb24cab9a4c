package main

import (
	"reflect"
	"testing"
)

func TestFedctlTakesOnlyALeadingLabName(t *testing.T) {
	cases := []struct {
		args     []string
		wantName string
		wantArgs []string
	}{
		{[]string{"policy", "list"}, "fl", []string{"policy", "list"}},
		{[]string{"--name", "lab2", "policy", "list", "-o", "yaml"}, "lab2", []string{"policy", "list", "-o", "yaml"}},
		{[]string{"--name=lab3", "watch"}, "lab3", []string{"watch"}},
		{[]string{"--server", "x:1", "--name", "lab2", "cluster", "list"}, "fl", []string{"--server", "x:1", "--name", "lab2", "cluster", "list"}},
		{[]string{"--name"}, "fl", []string{"--name"}},
		{nil, "fl", nil},
	}
	for _, tc := range cases {
		name, args := labNameArg("fl", tc.args)
		if name != tc.wantName || !reflect.DeepEqual(args, tc.wantArgs) {
			t.Errorf("labNameArg(%q) = %q, %q; want %q, %q", tc.args, name, args, tc.wantName, tc.wantArgs)
		}
	}
}
