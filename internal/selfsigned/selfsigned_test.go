package selfsigned

import (
	"crypto/x509"
	"net/netip"
	"testing"
	"time"
)

// The certificate verifies against its own pool for its address, and not
// for another.
func TestVerify(t *testing.T) {
	a := netip.MustParseAddr("198.18.0.1")
	cert, pool, err := New("test", time.Hour, a, netip.MustParseAddr("2001:2::1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"198.18.0.1", "2001:2::1"} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "198.18.0.2"}); err == nil {
		t.Error("verified for an address it was not made for")
	}
}
