package regulate

import (
	"encoding/binary"
	"testing"

	"github.com/skylane/skylane/packet"
)

// TestMarkCE: each framing and ECN codepoint, what marking does.
func TestMarkCE(t *testing.T) {
	for _, c := range []struct {
		name   string
		spec   frameSpec
		lt     packet.LinkType
		marked bool // markCE's answer
		ecnOff int  // byte holding the ECN bits, -1 if none
		shift  uint // of the ECN bits in that byte
	}{
		{"ipv4 not-ect: left alone", frameSpec{tos: 0x00}, packet.Ethernet, false, 15, 0},
		{"ipv4 ect1", frameSpec{tos: 0x01}, packet.Ethernet, true, 15, 0},
		{"ipv4 ect0 with dscp ef", frameSpec{tos: 0xb8 | 0x02}, packet.Ethernet, true, 15, 0},
		{"ipv4 already ce", frameSpec{tos: 0x03}, packet.Ethernet, true, 15, 0},
		{"ipv4 behind a vlan tag", frameSpec{tos: 0x02, vlan: true}, packet.Ethernet, true, 19, 0},
		{"ipv4 raw ip", frameSpec{tos: 0x02, raw: true}, packet.RawIP, true, 1, 0},
		{"ipv6 not-ect", frameSpec{v6: true, tos: 0x00}, packet.Ethernet, false, 15, 4},
		{"ipv6 ect0 with dscp af41", frameSpec{v6: true, tos: 0x88 | 0x02}, packet.Ethernet, true, 15, 4},
		{"ipv6 raw ip", frameSpec{v6: true, tos: 0x01, raw: true}, packet.RawIP, true, 1, 4},
		{"version disagrees with ethertype", frameSpec{tos: 0x02, badVersion: true}, packet.Ethernet, false, -1, 0},
		{"ethernet frame on a raw ip link", frameSpec{tos: 0x02}, packet.RawIP, false, -1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := build(c.spec)
			orig := append([]byte(nil), f...)
			if got := markCE(f, c.lt); got != c.marked {
				t.Fatalf("markCE = %v", got)
			}
			if got := ecnCapable(orig, c.lt); got != c.marked {
				t.Fatalf("ecnCapable = %v", got)
			}
			for i := range f {
				changed := f[i] != orig[i]
				ipOff := c.ecnOff - 1 // the IP header starts one byte before the TOS
				allowed := c.marked && (i == c.ecnOff || !c.spec.v6 && (i == ipOff+10 || i == ipOff+11))
				if changed && !allowed {
					t.Fatalf("byte %d changed %#x → %#x", i, orig[i], f[i])
				}
			}
			if !c.marked {
				return
			}
			if ecn := f[c.ecnOff] >> c.shift & ecnMask; ecn != ecnCE {
				t.Fatalf("ECN %#b after marking", ecn)
			}
			if dscp := f[c.ecnOff] >> c.shift >> 2; dscp != orig[c.ecnOff]>>c.shift>>2 {
				t.Fatalf("DSCP changed")
			}
			if !c.spec.v6 {
				ip := f[c.ecnOff-1 : c.ecnOff-1+20]
				if got, want := binary.BigEndian.Uint16(ip[10:12]), ipv4Checksum(ip); got != want {
					t.Fatalf("checksum %#04x, recomputed %#04x", got, want)
				}
			}
		})
	}
}

// TestMarkCEChecksumExhaustive: for every TOS with ECT set and a spread of
// header contents, the incremental checksum equals the recomputed one.
func TestMarkCEChecksumExhaustive(t *testing.T) {
	for tos := range 256 {
		if tos&ecnMask == 0 || tos&ecnMask == ecnCE {
			continue
		}
		for id := 0; id < 65536; id += 257 {
			f := build(frameSpec{tos: byte(tos)})
			binary.BigEndian.PutUint16(f[18:20], uint16(id)) // IP ID varies the checksum
			binary.BigEndian.PutUint16(f[24:26], 0)
			binary.BigEndian.PutUint16(f[24:26], ipv4Checksum(f[14:34]))
			markCE(f, packet.Ethernet)
			if got, want := binary.BigEndian.Uint16(f[24:26]), ipv4Checksum(f[14:34]); got != want {
				t.Fatalf("tos %#x id %d: checksum %#04x, recomputed %#04x", tos, id, got, want)
			}
		}
	}
}

// TestFrameTruncated: every prefix of valid frames, of every framing, is
// safe to hash and mark: no panic, no write past the prefix, and a prefix
// shorter than the fixed IP header is not IP.
func TestFrameTruncated(t *testing.T) {
	for _, s := range []frameSpec{
		{tos: 2}, {tos: 2, vlan: true}, {tos: 2, raw: true},
		{v6: true, tos: 2}, {v6: true, tos: 2, vlan: true}, {v6: true, tos: 1, raw: true},
	} {
		lt := packet.Ethernet
		if s.raw {
			lt = packet.RawIP
		}
		full := build(s)
		for n := range len(full) {
			f := append(make([]byte, 0, n+8), full[:n]...)
			guard := f[n : n+8 : n+8]
			for i := range guard {
				guard[i] = 0xa5
			}
			flowHash(f, lt, 0)
			markCE(f, lt)
			for _, g := range guard {
				if g != 0xa5 {
					t.Fatalf("%+v prefix %d: wrote past the frame", s, n)
				}
			}
		}
	}
}

// TestFlowHash: the 5-tuple decides the hash; the payload, TTL and IP ID do
// not; IPv4 fragments of one datagram hash alike, ports or not.
func TestFlowHash(t *testing.T) {
	h := func(f []byte) uint32 {
		v, ok := flowHash(f, packet.Ethernet, 1)
		if !ok {
			t.Fatal("not IP")
		}
		return v
	}
	a := build(frameSpec{sport: 1000, seq: 1})
	b := build(frameSpec{sport: 1000, seq: 2, size: 300})
	b[22] = 7 // TTL
	binary.BigEndian.PutUint16(b[18:20], 99)
	if h(a) != h(b) {
		t.Fatal("same 5-tuple, different hash")
	}
	if h(a) == h(build(frameSpec{sport: 1001})) {
		t.Fatal("ports ignored")
	}
	if v, _ := flowHash(a, packet.Ethernet, 2); v == h(a) {
		t.Fatal("seed ignored")
	}
	first := build(frameSpec{sport: 1000})
	first[20] = 0x20 // MF: first fragment, with ports
	later := build(frameSpec{sport: 2000})
	binary.BigEndian.PutUint16(later[20:22], 100) // offset 800: no ports
	if h(first) != h(later) {
		t.Fatal("fragments of one datagram hash apart")
	}
	if h(build(frameSpec{v6: true, sport: 1})) == h(build(frameSpec{v6: true, sport: 2})) {
		t.Fatal("IPv6 ports ignored")
	}
}
