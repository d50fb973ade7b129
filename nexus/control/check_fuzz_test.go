package control

import (
	"errors"
	"testing"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/fuzzbytes"
	"github.com/skylane/skylane/nexus/policy"
	"github.com/skylane/skylane/packet"
)

const fuzzPolicy = `
[[allow]]
uid = 1000
tcp = ["8080", "9000-9099"]
udp = ["5353"]
addrs = ["198.18.0.1", "2001:2::1"]
max_flows = 8
dial = true
dial_to = ["198.18.0.0/15", "2001:2::/48"]

[[allow]]
uid = 1001
tcp = ["1-65535"]
`

// FuzzSessionCheck: any key and kind an app registers, in any order, gets
// nil or a refusal wrapping ErrNotPermitted from the session's check, never
// a panic; a flow it registers counts toward max_flows.
func FuzzSessionCheck(f *testing.F) {
	pol, err := policy.Parse("fuzz.toml", []byte(fuzzPolicy), policy.Resolver{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{0, 6, 2, 0x1f, 0x90, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 6, 1, 0x9c, 0x40, 198, 18, 0, 1, 198, 18, 0, 2, 0, 80})
	f.Add([]byte{1, 17, 3, 0x14, 0xe9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := fuzzbytes.New(in)
		uid := 1000 + uint32(r.Byte()%3)
		s := &Server{eph: [2]uint16{32768, 60999}}
		g, gErr := pol.Grant(policy.Cred{UID: uid, GID: uid})
		ss := &session{s: s, cred: policy.Cred{UID: uid}, g: g, gErr: gErr, flows: make(map[flowKey]struct{})}
		for !r.Done() {
			proto := []uint8{packet.ProtoTCP, packet.ProtoUDP, 1, r.Byte()}[r.Byte()%4]
			kind := flow.Kind(r.Byte() % 5) // 0 and 4 are not kinds: checked anyway
			port := uint16(r.Byte())<<8 | uint16(r.Byte())
			var la, ra [4]byte
			for i := range la {
				la[i] = r.Byte()
			}
			for i := range ra {
				ra[i] = r.Byte()
			}
			rport := uint16(r.Byte())<<8 | uint16(r.Byte())
			k := packet.Key{LocalPort: port, RemotePort: rport, Version: 4, Proto: proto}
			copy(k.Local[12:], la[:])
			copy(k.Remote[12:], ra[:])
			k.Local[10], k.Local[11], k.Remote[10], k.Remote[11] = 0xff, 0xff, 0xff, 0xff
			err := ss.check(k, kind)
			if err != nil && !errors.Is(err, control.ErrNotPermitted) {
				t.Fatalf("check %v %v: %v, not a refusal", kind, k, err)
			}
			if err == nil {
				if g != nil && g.MaxFlows() > 0 && len(ss.flows) >= g.MaxFlows() {
					t.Fatalf("flow %d allowed past max_flows %d", len(ss.flows)+1, g.MaxFlows())
				}
				ss.flows[flowKey{k, kind}] = struct{}{}
			}
		}
	})
}
