package main

import (
	"io"
	"strings"
	"testing"
)

// TestParseNexus: the flag errors a user meets say what to give.
func TestParseNexus(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // substring of the error; "" for none
	}{
		{[]string{"--dev", "eth1", "--socket", "/run/skylane/nexus.sock"}, ""},
		{[]string{"--driver", "memif", "--addr", "198.18.0.1", "--socket", "/tmp/s"}, ""},
		{[]string{"--dev", "eth1"}, "--socket is required"},
		{[]string{"--socket", "/tmp/s"}, "--dev is required"},
		{[]string{"--driver", "tun", "--socket", "/tmp/s"}, "needs --addr"},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--addr", "198.18.0.1:80"}, "without a zone or port"},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--tun-addr", "198.18.1.1/24"}, "--tun-addr is for --driver tun"},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--log-format", "xml"}, "text or json"},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "extra"}, "unexpected argument"},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--max-flows", "1000000", "--max-port-flows", "100000"}, ""},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--max-port-flows", "-1"}, "want a positive number"},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--busy-poll", "50us"}, ""},
		{[]string{"--dev", "eth1", "--socket", "/tmp/s", "--busy-poll", "2s"}, "outside 0..1s"},
	} {
		_, err := parseNexus(tc.args, io.Discard)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

func TestLookupGroup(t *testing.T) {
	if g, err := lookupGroup(""); err != nil || g != -1 {
		t.Errorf(`"": %d, %v`, g, err)
	}
	if g, err := lookupGroup("4242"); err != nil || g != 4242 {
		t.Errorf("4242: %d, %v", g, err)
	}
	if g, err := lookupGroup("root"); err != nil || g != 0 {
		t.Errorf("root: %d, %v", g, err)
	}
	if _, err := lookupGroup("no-such-group-here"); err == nil || !strings.Contains(err.Error(), "groupadd") {
		t.Errorf("unknown group: %v", err)
	}
}
