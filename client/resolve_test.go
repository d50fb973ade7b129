package client

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseHosts(t *testing.T) {
	m := parseHosts([]byte(`# comment
198.18.0.2   web.skylane.test  Web2.Skylane.Test.   # trailing comment
2001:2::2    web.skylane.test
not-an-ip    bad.skylane.test
fe80::1%eth0 zoned.skylane.test
::ffff:198.18.0.3 mapped.skylane.test
198.18.0.4
`))
	want := map[string][]netip.Addr{
		"web.skylane.test":    {netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:2::2")},
		"web2.skylane.test":   {netip.MustParseAddr("198.18.0.2")},
		"mapped.skylane.test": {netip.MustParseAddr("198.18.0.3")},
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("parseHosts: %v, want %v", m, want)
	}
}

func TestParseResolvConf(t *testing.T) {
	got := parseResolvConf([]byte("search skylane.test\nnameserver 198.18.0.2\nnameserver  2001:2::2 \nnameserver nope\noptions ndots:2\nnameserver fe80::1%eth0\n"))
	want := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:53"), netip.MustParseAddrPort("[2001:2::2]:53")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseResolvConf: %v, want %v", got, want)
	}
}

// FuzzResolvFiles: the hosts and resolv.conf parsers never panic and
// return only valid, unzoned, unmapped addresses, lower-case names
// without a trailing dot.
func FuzzResolvFiles(f *testing.F) {
	for _, s := range []string{
		"198.18.0.2 web.skylane.test\n",
		"nameserver 198.18.0.2\n",
		"::ffff:1.2.3.4 A.B.\n# x\n\n",
		"nameserver\n\x00\xff 1.2.3.4",
		strings.Repeat("1.1.1.1 ", 1000),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for name, as := range parseHosts(b) {
			if name == "" || name != strings.ToLower(name) || strings.HasSuffix(name, ".") {
				t.Fatalf("name %q", name)
			}
			for _, a := range as {
				if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
					t.Fatalf("address %v of %q", a, name)
				}
			}
		}
		for _, ap := range parseResolvConf(b) {
			if !ap.Addr().IsValid() || ap.Addr().Zone() != "" || ap.Addr().Is4In6() || ap.Port() != dnsPort {
				t.Fatalf("nameserver %v", ap)
			}
		}
	})
}
