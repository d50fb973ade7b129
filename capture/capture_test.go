package capture_test

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// udp is an IPv4/UDP packet (RawIP) from 198.19.0.2:sport to
// 198.18.0.1:dport, size bytes long.
func udp(sport, dport uint16, size int) []byte {
	f := packettest.Frame{Link: packet.RawIP, Src: netip.MustParseAddrPort("198.19.0.2:0"),
		Dst: netip.MustParseAddrPort("198.18.0.1:0"), Proto: packet.ProtoUDP, Size: size}
	f.Src = netip.AddrPortFrom(f.Src.Addr(), sport)
	f.Dst = netip.AddrPortFrom(f.Dst.Addr(), dport)
	return f.Bytes()
}

func TestParsePoints(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []capture.Point
	}{
		{"drop", []capture.Point{capture.DropRx, capture.DropTx}},
		{"device-tx,app", []capture.Point{capture.DeviceTx, capture.AppRx, capture.AppTx}},
		{"kernel-rx", []capture.Point{capture.KernelRx}},
	} {
		s, err := capture.ParsePoints(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		for p := capture.Point(0); p < capture.NumPoints; p++ {
			want := false
			for _, w := range tc.want {
				want = want || w == p
			}
			if s.Has(p) != want {
				t.Errorf("%q: Has(%v) = %v", tc.in, p, !want)
			}
		}
	}
	if _, err := capture.ParsePoints("dev"); err == nil {
		t.Error("ParsePoints(dev) took a prefix that is no point name")
	}
}

func TestAppMatches(t *testing.T) {
	for _, tc := range []struct {
		a, ch string
		want  bool
	}{{"web", "web", true}, {"web", "web-3", true}, {"web", "web-", false}, {"web", "web-x", false},
		{"web", "webx-3", false}, {"web-3", "web-3", true}, {"we", "web-3", false}} {
		if got := capture.AppMatches(tc.a, tc.ch); got != tc.want {
			t.Errorf("AppMatches(%q, %q) = %v", tc.a, tc.ch, got)
		}
	}
}

// The filter takes exactly the frames each field names.
func TestFilter(t *testing.T) {
	pkt := udp(6000, 5000, 64)
	type put struct {
		p           capture.Point
		app, reason string
	}
	tests := []struct {
		name string
		f    capture.Filter
		put  put
		want bool
	}{
		{"zero takes all", capture.Filter{}, put{capture.DeviceRx, "", ""}, true},
		{"point", capture.Filter{Points: 1 << capture.AppTx}, put{capture.DeviceRx, "", ""}, false},
		{"app", capture.Filter{Apps: []string{"web"}}, put{capture.AppRx, "web-2", ""}, true},
		{"other app", capture.Filter{Apps: []string{"web"}}, put{capture.AppRx, "db-2", ""}, false},
		{"app excludes device", capture.Filter{Apps: []string{"web"}}, put{capture.DeviceRx, "", ""}, false},
		{"app - takes device", capture.Filter{Apps: []string{"web", "-"}}, put{capture.DeviceRx, "", ""}, true},
		{"proto", capture.Filter{Proto: packet.ProtoUDP}, put{capture.AppRx, "", ""}, true},
		{"other proto", capture.Filter{Proto: packet.ProtoTCP}, put{capture.AppRx, "", ""}, false},
		{"host src", capture.Filter{Host: netip.MustParseAddr("198.19.0.2")}, put{capture.AppRx, "", ""}, true},
		{"host dst", capture.Filter{Host: netip.MustParseAddr("198.18.0.1")}, put{capture.AppRx, "", ""}, true},
		{"other host", capture.Filter{Host: netip.MustParseAddr("198.18.0.7")}, put{capture.AppRx, "", ""}, false},
		{"port", capture.Filter{Port: 5000}, put{capture.AppRx, "", ""}, true},
		{"other port", capture.Filter{Port: 5001}, put{capture.AppRx, "", ""}, false},
		{"reason", capture.Filter{Reasons: []string{"src_addr"}}, put{capture.DropTx, "a", "src_addr"}, true},
		{"other reason", capture.Filter{Reasons: []string{"src_addr"}}, put{capture.DropTx, "a", "mtu"}, false},
		{"reason excludes passes", capture.Filter{Reasons: []string{"src_addr"}}, put{capture.AppTx, "a", ""}, false},
	}
	for _, tc := range tests {
		r, err := capture.NewRing(capture.Options{Filter: tc.f, Slots: 4})
		if err != nil {
			t.Fatal(err)
		}
		r.Put(1, tc.put.p, packet.RawIP, tc.put.app, tc.put.reason, pkt)
		if got := r.Matched() == 1; got != tc.want {
			t.Errorf("%s: matched %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRingOptions(t *testing.T) {
	for _, o := range []capture.Options{{Snaplen: -1}, {Snaplen: capture.MaxSnaplen + 1}, {Slots: capture.MaxSlots + 1},
		{Slots: capture.MaxSlots, Snaplen: capture.MaxSnaplen}} {
		if _, err := capture.NewRing(o); err == nil {
			t.Errorf("NewRing(%+v) took it", o)
		}
	}
}

// A writer and a reader at once (run with -race): every frame is either
// read, in order, or counted as a drop.
func TestRingConcurrent(t *testing.T) {
	r, err := capture.NewRing(capture.Options{Slots: 16, Snaplen: 8})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b := make([]byte, 8)
		for i := range n {
			b[0], b[1] = byte(i), byte(i>>8)
			r.Put(int64(i), capture.DeviceRx, packet.Ethernet, "", "", b)
			r.Ring()
		}
		r.Close()
	}()
	read, last := 0, int64(-1)
	for {
		open := r.Wait(time.Second)
		r.Read(1000, func(rec *capture.Record) {
			if rec.Time <= last || rec.Data[0] != byte(rec.Time) {
				t.Errorf("record %d after %d, data %d", rec.Time, last, rec.Data[0])
			}
			last = rec.Time
			read++
		})
		if !open {
			break
		}
	}
	wg.Wait()
	read += r.Read(1000, func(*capture.Record) {})
	if uint64(read)+r.Drops() != n || r.Matched() != n {
		t.Errorf("read %d + dropped %d != %d (matched %d)", read, r.Drops(), n, r.Matched())
	}
}

// Batches round-trip, and the decoder stops at the first fault.
func TestBatchRoundTrip(t *testing.T) {
	recs := []capture.Record{
		{Time: 1, Point: capture.DeviceRx, Link: packet.Ethernet, Len: 100, Data: bytes.Repeat([]byte{1}, 64)},
		{Time: 2, Point: capture.DropTx, Link: packet.RawIP, App: "web-3", Reason: "src_addr", Len: 3, Data: []byte{1, 2, 3}},
		{Time: 3, Point: capture.AppRx, Link: packet.RawIP, App: "web-3"},
	}
	b := capture.StartBatch(nil, 7, 2)
	size := len(b)
	for i := range recs {
		b = capture.AppendRecord(b, &recs[i])
		size += capture.RecordLen(&recs[i])
	}
	if size != len(b) {
		t.Errorf("RecordLen sums to %d, batch is %d bytes", size, len(b))
	}
	var got []capture.Record
	h, err := capture.DecodeBatch(b, func(r *capture.Record) { got = append(got, *r) })
	if err != nil || h.Matched != 7 || h.Drops != 2 || h.Records != 3 {
		t.Fatalf("header %+v, %v", h, err)
	}
	for i := range recs {
		w, g := recs[i], got[i]
		if w.Time != g.Time || w.Point != g.Point || w.Link != g.Link || w.App != g.App || w.Reason != g.Reason ||
			w.Len != g.Len || !bytes.Equal(w.Data, g.Data) {
			t.Errorf("record %d: got %+v, want %+v", i, g, w)
		}
	}
	for cut := range len(b) {
		if _, err := capture.DecodeBatch(b[:cut], func(*capture.Record) {}); err == nil {
			t.Errorf("a batch cut at %d decoded", cut)
		}
	}
}

// FuzzDecodeBatch: any message decodes or fails with ErrBadBatch, never
// panics, and what decodes re-encodes to the same bytes.
func FuzzDecodeBatch(f *testing.F) {
	b := capture.StartBatch(nil, 1, 0)
	b = capture.AppendRecord(b, &capture.Record{Time: 5, Point: capture.DropRx, App: "a", Reason: "no_flow", Len: 4, Data: []byte{1, 2}})
	f.Add(b)
	f.Add(capture.StartBatch(nil, 0, 0))
	f.Add([]byte("SKC1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var recs []capture.Record
		h, err := capture.DecodeBatch(b, func(r *capture.Record) { recs = append(recs, *r) })
		if err != nil {
			return
		}
		out := capture.StartBatch(nil, h.Matched, h.Drops)
		for i := range recs {
			if recs[i].Len < len(recs[i].Data) || recs[i].Point >= capture.NumPoints {
				t.Fatalf("record %d: %+v", i, recs[i])
			}
			out = capture.AppendRecord(out, &recs[i])
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("re-encoded batch differs")
		}
	})
}
