package connload

import (
	"net/netip"
	"testing"
)

// TestSpec: a spec survives its environment form; malformed ones are
// refused with an error, never half read.
func TestSpec(t *testing.T) {
	s := Spec{Server: netip.MustParseAddrPort("198.18.0.1:8080"), Source: netip.MustParseAddr("198.18.0.10"), Count: 5000, InFlight: 4}
	got, err := ParseSpec(s.String())
	if err != nil || got != s {
		t.Fatalf("ParseSpec(%q) = %+v, %v", s.String(), got, err)
	}
	for _, bad := range []string{"", "198.18.0.1:80,198.18.0.10,5", "198.18.0.1,198.18.0.10,5,4", "198.18.0.1:80,x,5,4",
		"198.18.0.1:80,198.18.0.10,0,4", "198.18.0.1:80,198.18.0.10,5,-1", "198.18.0.1:80,198.18.0.10,5,4,9"} {
		if _, err := ParseSpec(bad); err == nil {
			t.Errorf("ParseSpec(%q) accepted", bad)
		}
	}
}
