package packet

import (
	"bytes"
	"testing"
)

// templateSeeds returns the raw IP packets of the accepted cases: the
// Ethernet ones without their 14-byte header, and the raw IP ones.
func templateSeeds(tb testing.TB) [][]byte {
	var out [][]byte
	for _, c := range acceptCases(tb) {
		switch {
		case c.link == RawIP:
			out = append(out, c.pkt)
		case len(c.pkt) > ethHdrLen && c.pkt[12] != 0x81: // no VLAN tag
			out = append(out, c.pkt[ethHdrLen:])
		}
	}
	return out
}

// FuzzTemplate checks Template's contract: a packet built by editing a
// template's packet (byte changes, truncation, extension) that Match
// accepts parses, with the template's keys, the IP length and the flags
// Match returned.
func FuzzTemplate(f *testing.F) {
	for i, s := range templateSeeds(f) {
		f.Add(s, []byte{})
		f.Add(s, []byte{2, 0xff, byte(i)})            // total length (IPv4)
		f.Add(s, []byte{5, 0x10, 0})                  // payload length (IPv6)
		f.Add(s, []byte{32, 0x10, 1, 33, 0x02, 2})    // TCP data offset and flags (IPv4)
		f.Add(s, []byte{24, 0, 3, 25, 4, 4, 6, 1, 5}) // UDP length (IPv4), MF
	}
	f.Fuzz(func(t *testing.T, seed, edits []byte) {
		var p Parsed
		if Parse(seed, RawIP, &p) != nil {
			return
		}
		var tm Template
		if !tm.Set(seed, &p) {
			if _, _, ok := tm.Match(seed); ok {
				t.Fatal("an unset template matched")
			}
			return
		}
		rx, tx := p.RxKey(), p.TxKey()
		if ipLen, fl, ok := tm.Match(seed); !ok || ipLen != p.IPLen || fl != p.Flags&flagsIf(p.Proto == ProtoTCP) {
			t.Fatalf("the template's own packet: Match = %d, %v, %v; parsed %d, %v", ipLen, fl, ok, p.IPLen, p.Flags)
		}
		b := bytes.Clone(seed)
		// edits: (offset, value, op) triples; op 0..3 set a byte, 4 cuts
		// the packet at offset, 5 appends value bytes.
		for len(edits) >= 3 {
			off, val, op := int(edits[0]), edits[1], edits[2]%6
			edits = edits[3:]
			switch {
			case op < 4 && off < len(b):
				b[off] = val
			case op == 4 && off < len(b):
				b = b[:off]
			case op == 5:
				b = append(b, bytes.Repeat([]byte{0xee}, int(val))...)
			}
		}
		ipLen, fl, ok := tm.Match(b)
		// MatchEach agrees with Match, alone and next to the template's own
		// packet.
		lens, flags := make([]int, 2), make([]TCPFlags, 2)
		tm.MatchEach([][]byte{append(b, 0xee), seed}, []int{len(b), len(seed)}, lens, flags)
		if !ok {
			ipLen, fl = 0, 0
		}
		if lens[0] != ipLen || flags[0] != fl || lens[1] != p.IPLen {
			t.Fatalf("MatchEach = %v %v, Match = %d %v %v", lens, flags, ipLen, fl, ok)
		}
		if !ok {
			return
		}
		var q Parsed
		if err := Parse(b[:ipLen], RawIP, &q); err != nil {
			t.Fatalf("Match accepted %x (IP length %d), Parse refused it: %v", b, ipLen, err)
		}
		if q.IPLen != ipLen || q.IPOptions || q.Flags != fl || q.RxKey() != rx || q.TxKey() != tx {
			t.Fatalf("Match accepted %x as %d bytes, flags %v; Parse says %d bytes, flags %v, options %v, keys %v %v (template %v %v)",
				b, ipLen, fl, q.IPLen, q.Flags, q.IPOptions, q.RxKey(), q.TxKey(), rx, tx)
		}
	})
}

// flagsIf returns all flags if cond, else none.
func flagsIf(cond bool) TCPFlags {
	if cond {
		return 0xff
	}
	return 0
}

// A template matches later segments of its flow and nothing of another
// flow, and an unset one matches nothing.
func TestTemplate(t *testing.T) {
	var zero Template
	seeds := templateSeeds(t)
	for _, s := range seeds {
		if _, _, ok := zero.Match(s); ok {
			t.Fatal("the zero Template matched")
		}
	}
	set := 0
	for i, s := range seeds {
		var p Parsed
		if Parse(s, RawIP, &p) != nil {
			continue // ARP, with its Ethernet header cut off
		}
		var tm Template
		if !tm.Set(s, &p) {
			if p.HasL4 && (p.Proto == ProtoTCP || p.Proto == ProtoUDP) && !p.IPOptions && p.ExtHeaders == 0 && !p.IsFragment() {
				t.Errorf("seed %d: Set refused a plain TCP/UDP packet", i)
			}
			continue
		}
		set++
		for j, o := range seeds {
			var q Parsed
			if Parse(o, RawIP, &q) != nil {
				continue
			}
			_, _, ok := tm.Match(o)
			same := q.TxKey() == p.TxKey() && !q.IPOptions && q.ExtHeaders == 0 && !q.IsFragment() && q.HasL4
			if ok && !same {
				t.Errorf("template of seed %d matched seed %d of another flow", i, j)
			}
		}
		// A changed source port is another flow.
		b := bytes.Clone(s)
		b[p.L4Off] ^= 1
		if _, _, ok := tm.Match(b); ok {
			t.Errorf("seed %d: matched after its source port changed", i)
		}
	}
	if set == 0 {
		t.Fatal("no seed made a template")
	}
}

// BenchmarkTemplateMatch measures the transmit fast path's header check on
// an IPv4/UDP packet, next to Parse and TxKey, the work it replaces.
func BenchmarkTemplateMatch(b *testing.B) {
	var (
		pkt []byte
		p   Parsed
		tm  Template
	)
	for _, s := range templateSeeds(b) {
		if Parse(s, RawIP, &p) == nil && p.IPVersion == 4 && p.Proto == ProtoUDP && tm.Set(s, &p) {
			pkt = s
			break
		}
	}
	if pkt == nil {
		b.Fatal("no IPv4/UDP seed makes a template")
	}
	b.Run("match", func(b *testing.B) {
		n := 0
		for b.Loop() {
			if _, _, ok := tm.Match(pkt); ok {
				n++
			}
		}
		if n == 0 {
			b.Fatal("no match")
		}
	})
	b.Run("each", func(b *testing.B) {
		pkts, sizes := make([][]byte, 64), make([]int, 64)
		for i := range pkts {
			pkts[i], sizes[i] = pkt, len(pkt)
		}
		lens, flags := make([]int, 64), make([]TCPFlags, 64)
		for b.Loop() {
			tm.MatchEach(pkts, sizes, lens, flags)
		}
		if lens[63] == 0 {
			b.Fatal("no match")
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/packet")
	})
	b.Run("parse+key", func(b *testing.B) {
		var k Key
		for b.Loop() {
			Parse(pkt, RawIP, &p)
			p.TxKeyTo(&k)
		}
	})
}
