package flowswitch_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
)

// capRec is a captured record, its data copied.
type capRec struct {
	point       capture.Point
	app, reason string
	len         int
	data        []byte
}

func newCapture(t testing.TB, sw *flowswitch.Switch, o capture.Options) *capture.Ring {
	t.Helper()
	r, err := capture.NewRing(o)
	if err != nil {
		t.Fatal(err)
	}
	sw.AddCapture(r)
	t.Cleanup(func() { sw.RemoveCapture(r); r.Close() })
	return r
}

func readCapture(r *capture.Ring) []capRec {
	var out []capRec
	r.Read(1<<20, func(rec *capture.Record) {
		out = append(out, capRec{rec.Point, rec.App, rec.Reason, rec.Len, append([]byte(nil), rec.Data...)})
	})
	return out
}

// count returns how many of recs are at point p with reason.
func count(recs []capRec, p capture.Point, app, reason string) int {
	n := 0
	for _, r := range recs {
		if r.point == p && r.app == app && r.reason == reason {
			n++
		}
	}
	return n
}

// Every frame of an input batch is captured at device-rx; the ones of a
// flow at app-rx with their port's channel as app, L3 only; the one of no
// flow and the one that does not parse at drop-rx with their counters'
// names. A filter on the app takes only that app's frames.
func TestCaptureRx(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	r.register(t, 0, 6000, 5000)
	all := newCapture(t, r.sw, capture.Options{})
	appOnly := newCapture(t, r.sw, capture.Options{Filter: capture.Filter{Apps: []string{"port0"}}})
	noneMatch := newCapture(t, r.sw, capture.Options{Filter: capture.Filter{Port: 1}})
	good := udpFrame(t, 6000, 5000, "a", 100)
	stray := udpFrame(t, 6001, 5000, "b", 100) // no flow, no host link
	short := good[:20]                         // truncated IPv4 header
	r.write(t, good, stray, short, good)
	r.rxOnce(t, 4)
	if tags := r.drain(t, 0); !equal(tags, []string{"a", "a"}) {
		t.Fatalf("app got %v", tags)
	}
	recs := readCapture(all)
	if n := count(recs, capture.DeviceRx, "", ""); n != 4 {
		t.Errorf("%d frames at device-rx, want 4", n)
	}
	if n := count(recs, capture.AppRx, "port0", ""); n != 2 {
		t.Errorf("%d packets at app-rx for port0, want 2: %+v", n, recs)
	}
	if n := count(recs, capture.DropRx, "", "no_flow"); n != 1 {
		t.Errorf("%d no_flow drops captured, want 1", n)
	}
	parse := 0
	for _, rec := range recs {
		if rec.point == capture.DropRx && rec.reason != "no_flow" {
			if !bytes.Equal(rec.data, short) || len(rec.reason) < 6 || rec.reason[:6] != "parse_" {
				t.Errorf("drop %q of %d bytes, want the short frame as a parse_ drop", rec.reason, len(rec.data))
			}
			parse++
		}
	}
	if parse != 1 {
		t.Errorf("%d parse drops captured, want 1", parse)
	}
	for _, rec := range recs {
		if rec.point == capture.AppRx && !bytes.Equal(rec.data, good[14:]) {
			t.Errorf("app-rx data is not the frame's L3 packet")
		}
	}
	if got := readCapture(appOnly); len(got) != 2 || count(got, capture.AppRx, "port0", "") != 2 {
		t.Errorf("app filter took %d records: %+v", len(got), got)
	}
	if got := readCapture(noneMatch); len(got) != 0 {
		t.Errorf("port 1 filter took %d records", len(got))
	}
	if all.Drops() != 0 || all.Matched() != 8 {
		t.Errorf("matched %d, dropped %d; want 8, 0", all.Matched(), all.Drops())
	}
}

// An app's spoofs are captured at app-tx and drop-tx with their reason,
// never at device-tx; its valid packet at app-tx and device-tx, framed.
func TestCaptureTxSpoofs(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	ring := newCapture(t, r.sw, capture.Options{})
	good := udp0Pkt(100).build(t)
	spoofAddr := udp0Pkt(100)
	spoofAddr.src = netip.MustParseAddr("198.18.0.9")
	spoofOwner := txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: 5001, dport: 6000, size: 100} // port 1's flow
	r.send(t, 0, f.udp0.ID(), good, spoofAddr.build(t))
	r.send(t, 0, f.udp1.ID(), spoofOwner.build(t))
	if n := r.tx(t, 0); n != 3 {
		t.Fatalf("took %d, want 3", n)
	}
	if w := r.wire(t); len(w) != 1 {
		t.Fatalf("%d frames on the wire, want 1", len(w))
	}
	recs := readCapture(ring)
	app := recs[0].app
	if n := count(recs, capture.AppTx, app, ""); n != 3 {
		t.Errorf("%d packets at app-tx, want 3: %+v", n, recs)
	}
	if count(recs, capture.DropTx, app, "src_addr") != 1 || count(recs, capture.DropTx, app, "not_owner") != 1 {
		t.Errorf("drops captured: %+v", recs)
	}
	dev := 0
	for _, rec := range recs {
		if rec.point == capture.DeviceTx {
			dev++
			if rec.app != app || !bytes.Equal(rec.data[14:], good) {
				t.Errorf("device-tx record %q is not the valid packet framed", rec.app)
			}
		}
	}
	if dev != 1 {
		t.Errorf("%d frames at device-tx, want 1", dev)
	}
	if st := r.sw.Stats(); st.TxDrops.SrcAddr != 1 || st.TxDrops.NotOwner != 1 || st.TxPackets != 1 {
		t.Errorf("stats %+v, tx %d", st.TxDrops, st.TxPackets)
	}
}

// A ring nobody reads fills and drops, counted; the datapath delivers
// every packet regardless, and a removed capture gets nothing more.
func TestCaptureRingFull(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	r.register(t, 0, 6000, 5000)
	ring := newCapture(t, r.sw, capture.Options{Slots: 4, Snaplen: 64})
	for range 4 {
		frames := make([][]byte, 8)
		for i := range frames {
			frames[i] = udpFrame(t, 6000, 5000, "x", 100)
		}
		r.write(t, frames...)
		r.rxOnce(t, 8)
		if tags := r.drain(t, 0); len(tags) != 8 {
			t.Fatalf("app got %d packets, want 8", len(tags))
		}
	}
	if ring.Matched() != 64 || ring.Drops() != 60 {
		t.Errorf("matched %d, dropped %d; want 64, 60", ring.Matched(), ring.Drops())
	}
	recs := readCapture(ring)
	if len(recs) != 4 || len(recs[0].data) != 64 || recs[0].len != 100 {
		t.Errorf("%d records, first %d of %d bytes; want 4, 64 of 100", len(recs), len(recs[0].data), recs[0].len)
	}
	r.sw.RemoveCapture(ring)
	r.write(t, udpFrame(t, 6000, 5000, "y", 100))
	r.rxOnce(t, 1)
	if ring.Matched() != 64 {
		t.Errorf("a removed capture matched %d more", ring.Matched()-64)
	}
}

// What a full RX ring refuses is captured at drop-rx as rx_ring_full,
// with its port's channel; what it takes at app-rx.
func TestCaptureRxRingFull(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{RxSize: 8})
	r.register(t, 0, 1000, 53)
	ring := newCapture(t, r.sw, capture.Options{Filter: capture.Filter{Apps: []string{"port0"}}})
	var frames [][]byte
	for range 20 {
		frames = append(frames, udpFrame(t, 1000, 53, "a", 0))
	}
	r.write(t, frames...)
	r.rxOnce(t, 20)
	recs := readCapture(ring)
	if count(recs, capture.AppRx, "port0", "") != 8 || count(recs, capture.DropRx, "port0", "rx_ring_full") != 12 || len(recs) != 20 {
		t.Errorf("captured %+v; want 8 at app-rx, 12 rx_ring_full drops", recs)
	}
	if st := r.sw.Stats(); st.RxRingDrops != 12 {
		t.Errorf("RxRingDrops %d, want 12", st.RxRingDrops)
	}
}
