package drivers

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestParseProcAddr: /proc/net/{tcp,udp}[6] print addresses as 32-bit
// words in host byte order and ports as plain hex numbers.
func TestParseProcAddr(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the table below is written for a little-endian host")
	}
	for _, c := range []struct {
		in   string
		want netip.AddrPort
	}{
		{"0100007F:1F90", netip.MustParseAddrPort("127.0.0.1:8080")},
		{"010012C6:0050", netip.MustParseAddrPort("198.18.0.1:80")},
		{"00000000:0035", netip.MustParseAddrPort("0.0.0.0:53")},
		{"00000000000000000000000001000000:1F90", netip.MustParseAddrPort("[::1]:8080")},
		{"B80D0120000000000000000001000000:01BB", netip.MustParseAddrPort("[2001:db8::1]:443")},
		{"0000000000000000FFFF00000100007F:0016", netip.MustParseAddrPort("[::ffff:127.0.0.1]:22")},
	} {
		a, p, err := parseProcAddr(c.in)
		if err != nil || netip.AddrPortFrom(a, p) != c.want {
			t.Errorf("%s: %v %d %v, want %v", c.in, a, p, err, c.want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:XYZ", "01007F:0050", "zz00007F:0050", "0100007F:10000"} {
		if _, _, err := parseProcAddr(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
