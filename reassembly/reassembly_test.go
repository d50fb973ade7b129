package reassembly

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/fuzzbytes"
	"github.com/skylane/skylane/packet"
)

// Fragments are raw IP (as on TUN), UDP from 198.18.0.2 (or 2001:2::2) to
// 198.18.0.1 (2001:2::1). Data byte o of datagram id is pattern(id, o), so
// any reassembly can be checked byte by byte.

func pattern(id uint32, o int) byte { return byte(o*7 + int(id)) }

// frag4 returns an IPv4 fragment of datagram id from source src (last
// byte): data bytes [off, off+n) with MF set if mf.
func frag4(src byte, id uint32, off, n int, mf bool) []byte {
	b := make([]byte, 20+n)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(20+n))
	binary.BigEndian.PutUint16(b[4:6], uint16(id))
	fo := uint16(off >> 3)
	if mf {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:8], fo)
	b[8], b[9] = 64, packet.ProtoUDP
	copy(b[12:16], []byte{198, 18, 0, src})
	copy(b[16:20], []byte{198, 18, 0, 1})
	for i := range n {
		b[20+i] = pattern(id, off+i)
	}
	if off == 0 && n >= 8 { // a UDP header that parses: ports 40000 -> 7
		binary.BigEndian.PutUint16(b[20:22], 40000)
		binary.BigEndian.PutUint16(b[22:24], 7)
		binary.BigEndian.PutUint16(b[24:26], 8)
	}
	return b
}

// frag6 is frag4 for IPv6, with a fragment header.
func frag6(src byte, id uint32, off, n int, mf bool) []byte {
	b := make([]byte, 48+n)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(8+n))
	b[6], b[7] = 44, 64
	b[8], b[9], b[10], b[11], b[23] = 0x20, 0x01, 0, 2, src
	b[24], b[25], b[26], b[27], b[39] = 0x20, 0x01, 0, 2, 1
	b[40] = packet.ProtoUDP
	fo := uint16(off)
	if mf {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[42:44], fo)
	binary.BigEndian.PutUint32(b[44:48], id)
	for i := range n {
		b[48+i] = pattern(id, off+i)
	}
	if off == 0 && n >= 8 {
		binary.BigEndian.PutUint16(b[48:50], 40000)
		binary.BigEndian.PutUint16(b[50:52], 7)
		binary.BigEndian.PutUint16(b[52:54], 8)
	}
	return b
}

type fragFunc func(src byte, id uint32, off, n int, mf bool) []byte

func newR(tb testing.TB, o Options) *Reassembler {
	tb.Helper()
	if o.FrameLen == 0 {
		o.FrameLen = 1500
	}
	r, err := New(o)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// add parses b and adds it at now.
func add(tb testing.TB, r *Reassembler, now int64, b []byte) [][]byte {
	tb.Helper()
	var p packet.Parsed
	if err := packet.Parse(b, packet.RawIP, &p); err != nil {
		tb.Fatalf("parse fragment: %v", err)
	}
	return r.Add(now, b, &p)
}

// checkTiles checks that frames tile datagram id of total data bytes in
// order, with the pattern's bytes.
func checkTiles(tb testing.TB, frames [][]byte, id uint32, total int) {
	tb.Helper()
	at := 0
	for i, f := range frames {
		var p packet.Parsed
		if err := packet.Parse(f, packet.RawIP, &p); err != nil {
			tb.Fatalf("frame %d: %v", i, err)
		}
		if int(p.FragOff) != at || p.ID != id {
			tb.Fatalf("frame %d: offset %d id %d, want offset %d id %d", i, p.FragOff, p.ID, at, id)
		}
		data := f[p.L4Off : p.L3Off+p.IPLen]
		for j, c := range data {
			if o := at + j; c != pattern(id, o) && !(o < 8) {
				tb.Fatalf("frame %d: data byte %d is %d, want %d", i, o, c, pattern(id, o))
			}
		}
		at += len(data)
	}
	if at != total {
		tb.Fatalf("frames cover %d bytes, want %d", at, total)
	}
}

func TestReassembleOrders(t *testing.T) {
	for _, fam := range []struct {
		name string
		f    fragFunc
	}{{"v4", frag4}, {"v6", frag6}} {
		for _, order := range []string{"forward", "reverse", "middle_last"} {
			t.Run(fam.name+"_"+order, func(t *testing.T) {
				r := newR(t, Options{})
				// 4000 bytes in fragments of 1232: 0, 1232, 2464, 3696 (304, last).
				var fr [][]byte
				for off := 0; off < 4000; off += 1232 {
					n := min(1232, 4000-off)
					fr = append(fr, fam.f(2, 77, off, n, off+n < 4000))
				}
				switch order {
				case "reverse":
					for i, j := 0, len(fr)-1; i < j; i, j = i+1, j-1 {
						fr[i], fr[j] = fr[j], fr[i]
					}
				case "middle_last":
					fr[1], fr[3] = fr[3], fr[1]
				}
				var got [][]byte
				for i, f := range fr {
					got = add(t, r, 0, f)
					if (got != nil) != (i == len(fr)-1) {
						t.Fatalf("fragment %d: complete=%v", i, got != nil)
					}
				}
				checkTiles(t, got, 77, 4000)
				st := r.Stats()
				if st.Datagrams != 1 || st.Fragments != 4 || st.HeldSets != 0 {
					t.Fatalf("stats %+v", st)
				}
				r.Expire(0) // recycles the handed-back set
				if st := r.Stats(); st.HeldBytes != 0 {
					t.Fatalf("held %d bytes after the datagram went", st.HeldBytes)
				}
			})
		}
	}
}

func TestReassembleDrops(t *testing.T) {
	for _, fam := range []struct {
		name string
		f    fragFunc
	}{{"v4", frag4}, {"v6", frag6}} {
		f := fam.f
		cases := []struct {
			name  string
			frags [][]byte
			want  func(Stats) uint64
			n     uint64 // want(stats) after: fragments, with the set's held ones
			done  bool   // the datagram still completes
		}{
			// An exact copy is dropped alone: the datagram completes.
			{"duplicate", [][]byte{f(2, 1, 0, 16, true), f(2, 1, 0, 16, true), f(2, 1, 16, 8, false)},
				func(s Stats) uint64 { return s.Duplicates }, 1, true},
			// Bytes 8..16 sent twice: the whole set goes.
			{"overlap", [][]byte{f(2, 1, 0, 16, true), f(2, 1, 8, 16, true), f(2, 1, 24, 8, false)},
				func(s Stats) uint64 { return s.Overlaps }, 2, false},
			// Same start, different length.
			{"overlap_same_start", [][]byte{f(2, 1, 0, 16, true), f(2, 1, 0, 24, true), f(2, 1, 24, 8, false)},
				func(s Stats) uint64 { return s.Overlaps }, 2, false},
			// A fragment past the end the last fragment set.
			{"past_end", [][]byte{f(2, 1, 0, 16, true), f(2, 1, 32, 8, false), f(2, 1, 40, 8, true)},
				func(s Stats) uint64 { return s.Malformed }, 3, false},
			// Two different ends.
			{"two_ends", [][]byte{f(2, 1, 32, 8, false), f(2, 1, 0, 16, true), f(2, 1, 16, 8, false)},
				func(s Stats) uint64 { return s.Malformed }, 3, false},
			// A middle fragment of 12 bytes: not a multiple of 8.
			{"odd_middle", [][]byte{f(2, 1, 0, 16, true), f(2, 1, 16, 12, true)},
				func(s Stats) uint64 { return s.Malformed }, 2, false},
		}
		for _, c := range cases {
			t.Run(fam.name+"_"+c.name, func(t *testing.T) {
				r := newR(t, Options{})
				done := false
				for _, b := range c.frags {
					done = done || add(t, r, 0, b) != nil
				}
				st := r.Stats()
				if got := c.want(st); got != c.n || done != c.done {
					t.Fatalf("counter %d (want %d), done %v (want %v); %+v", got, c.n, done, c.done, st)
				}
			})
		}
	}
}

func TestReassembleOversize(t *testing.T) {
	r := newR(t, Options{})
	b := frag4(2, 9, 0, 16, true)
	var p packet.Parsed
	if err := packet.Parse(b, packet.RawIP, &p); err != nil {
		t.Fatal(err)
	}
	add(t, r, 0, frag4(2, 9, 16, 16, true))
	// Parse refuses such a fragment (bad_fragment); Add counts it too, for
	// callers that hand it one anyway.
	p.FragOff = 65520
	if r.Add(0, b, &p) != nil {
		t.Fatal("an oversize fragment completed a datagram")
	}
	if st := r.Stats(); st.Oversize != 2 || st.HeldSets != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReassembleTimeout(t *testing.T) {
	r := newR(t, Options{Timeout: time.Second})
	add(t, r, 0, frag4(2, 1, 0, 16, true))
	add(t, r, int64(500*time.Millisecond), frag4(3, 2, 0, 16, true))
	if d, ok := r.Next(); !ok || d != int64(time.Second) {
		t.Fatalf("Next = %d, %v", d, ok)
	}
	if n := r.Expire(int64(time.Second) - 1); n != 0 {
		t.Fatalf("expired %d early", n)
	}
	if n := r.Expire(int64(time.Second)); n != 1 {
		t.Fatalf("expired %d at 1s, want 1", n)
	}
	// The late last fragment of the expired set starts a set of its own.
	if add(t, r, int64(time.Second), frag4(2, 1, 16, 8, false)) != nil {
		t.Fatal("a fragment of an expired set completed it")
	}
	if n := r.Expire(int64(3 * time.Second)); n != 2 {
		t.Fatalf("expired %d at 3s, want 2", n)
	}
	if st := r.Stats(); st.Timeouts != 3 || st.HeldBytes != 0 || st.HeldSets != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReassembleLimits(t *testing.T) {
	// Room for 8 buffers in all, 4 per source.
	r := newR(t, Options{FrameLen: 1000, MaxBytes: 8000, MaxSourceBytes: 4000})
	for i := range 6 { // source .2: 4 held, 2 refused
		add(t, r, 0, frag4(2, uint32(i), 0, 16, true))
	}
	if st := r.Stats(); st.SourceFull != 2 || st.HeldBytes != 4000 {
		t.Fatalf("stats %+v", st)
	}
	for i := range 6 { // .3: 4 held, 2 refused (memory full); .4: refused
		add(t, r, 0, frag4(3, uint32(i), 0, 16, true))
	}
	add(t, r, 0, frag4(4, 0, 0, 16, true))
	if st := r.Stats(); st.SourceFull != 2 || st.MemoryFull != 3 || st.HeldBytes != 8000 {
		t.Fatalf("stats %+v", st)
	}
	// A frame larger than the buffers is refused.
	if r.Add(0, make([]byte, 1001), &packet.Parsed{MoreFrags: true}) != nil || r.Stats().Malformed != 1 {
		t.Fatalf("stats %+v", r.Stats())
	}
	r.Flush()
	if st := r.Stats(); st.HeldBytes != 0 || st.HeldSets != 0 || len(r.sources) != 0 {
		t.Fatalf("after Flush: %+v, %d sources", st, len(r.sources))
	}
}

func TestReassembleTooMany(t *testing.T) {
	r := newR(t, Options{MaxFragments: 4})
	for i := range 5 {
		add(t, r, 0, frag6(2, 1, i*8, 8, true))
	}
	if st := r.Stats(); st.TooMany != 5 || st.HeldSets != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReassembleNoAllocs(t *testing.T) {
	r := newR(t, Options{})
	fr := [][]byte{frag4(2, 5, 0, 1480, true), frag4(2, 5, 1480, 1480, true), frag4(2, 5, 2960, 100, false)}
	ps := make([]packet.Parsed, len(fr))
	for i, b := range fr {
		if err := packet.Parse(b, packet.RawIP, &ps[i]); err != nil {
			t.Fatal(err)
		}
	}
	run := func() {
		for i, b := range fr {
			r.Add(0, b, &ps[i])
		}
	}
	run() // warm the free lists and the maps
	if a := testing.AllocsPerRun(100, run); a != 0 {
		t.Fatalf("%.1f allocations per datagram, want 0", a)
	}
}

func TestOptions(t *testing.T) {
	for _, o := range []Options{
		{},                                  // no FrameLen
		{FrameLen: 1500, MaxBytes: 1000},    // no room for a frame
		{FrameLen: 1500, MaxSourceBytes: 1}, // no room per source
		{FrameLen: 1500, MaxBytes: 4000, MaxSourceBytes: 8000},
		{FrameLen: 1500, MaxFragments: 1},
		{FrameLen: 1500, Timeout: -1},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// FuzzReassembler replays fragments of a few datagrams from a few sources,
// both families, at any offsets and lengths, with time moving on, and
// checks the invariants of the package doc: memory within its bounds (in
// all and per source), and every datagram handed back tiling its data
// exactly, byte for byte.
func FuzzReassembler(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, 1, 1, 2, 0, 0, 3, 0, 0})
	f.Add([]byte{1, 1, 0, 0, 10, 1, 1, 1, 1, 10, 0, 0, 1, 2, 2, 0})
	f.Add(bytes.Repeat([]byte{0, 3, 1, 7, 4, 1}, 30))
	f.Fuzz(func(t *testing.T, data []byte) {
		const frameLen, maxBytes, perSource = 600, 24 * 600, 10 * 600
		r := newR(t, Options{FrameLen: frameLen, MaxBytes: maxBytes, MaxSourceBytes: perSource,
			MaxFragments: 16, Timeout: time.Second})
		in := fuzzbytes.New(data)
		var now int64
		for !in.Done() {
			op := in.Byte()
			if op&0x80 != 0 {
				now += int64(op&0x7f) * int64(50*time.Millisecond)
				r.Expire(now)
				continue
			}
			v6 := op&1 != 0
			src := 2 + op>>1&3
			id := uint32(in.Byte() & 3)
			off := int(in.Byte()) * 8
			n := int(in.Byte())*8 + int(in.Byte()&7)
			n = max(min(n, frameLen-48), 1)
			mf := in.Byte()&1 == 0
			b := frag4(src, id, off, n, mf)
			if v6 {
				b = frag6(src, id, off, n, mf)
			}
			var p packet.Parsed
			if packet.Parse(b, packet.RawIP, &p) != nil || !p.IsFragment() {
				continue
			}
			got := r.Add(now, b, &p)
			st := r.Stats()
			if st.HeldBytes > maxBytes || st.HeldBytes < 0 {
				t.Fatalf("held %d bytes, bound %d", st.HeldBytes, maxBytes)
			}
			for s, held := range r.sources {
				if held > perSource || held <= 0 {
					t.Fatalf("source %v holds %d bytes, bound %d", s, held, perSource)
				}
			}
			if got != nil {
				var q packet.Parsed
				if err := packet.Parse(got[len(got)-1], packet.RawIP, &q); err != nil || q.MoreFrags {
					t.Fatalf("last frame: %v, MF %v", err, q.MoreFrags)
				}
				checkTiles(t, got, id, int(q.FragOff)+q.L3Off+q.IPLen-q.L4Off)
			}
		}
		r.Flush()
		if st := r.Stats(); st.HeldBytes != 0 || len(r.sources) != 0 {
			t.Fatalf("after Flush: %+v", st)
		}
	})
}
