package control_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/control"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// strayFrame is a UDP frame to the nexus's address that no flow claims.
func strayFrame(port uint16) []byte {
	f := packettest.Frame{Src: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.2"), 6000),
		Dst: netip.AddrPortFrom(addr4, port), Proto: packet.ProtoUDP, Size: 100}
	return f.Bytes()
}

// A capture over the control socket streams the device's frames and the
// switch's drops with their reason, filtered by the nexus; closing the
// client ends it on the nexus (Serve joins the session, TestMain finds no
// goroutine left).
func TestCaptureStream(t *testing.T) {
	_, path, stop, peer := servePeer(t)
	cs, err := server.StartCapture(path, control.CaptureRequest{Points: []string{"device-rx", "drop"}, Port: 7, Snaplen: 64})
	if err != nil {
		t.Fatal(err)
	}
	if cs.Reply.LinkType != uint8(packet.Ethernet) || cs.Reply.Snaplen != 64 {
		t.Errorf("reply %+v", cs.Reply)
	}
	if w, err := peer.Write([][]byte{strayFrame(7), strayFrame(8), strayFrame(7)}); w != 3 || err != nil {
		t.Fatalf("peer write: %d, %v", w, err)
	}
	var recs []capture.Record
	deadline := time.Now().Add(10 * time.Second)
	for len(recs) < 4 && time.Now().Before(deadline) {
		if _, err := cs.Next(func(r *capture.Record) {
			rec := *r
			rec.Data = append([]byte(nil), r.Data...)
			recs = append(recs, rec)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4 (2 frames to port 7 at device-rx and drop-rx): %+v", len(recs), recs)
	}
	for _, r := range recs {
		if r.Point != capture.DeviceRx && (r.Point != capture.DropRx || r.Reason != "no_flow") || r.Len != 100 || len(r.Data) != 64 {
			t.Errorf("record %v %q, %d of %d bytes", r.Point, r.Reason, len(r.Data), r.Len)
		}
	}
	cs.Close()
	stop()
}

// A client that stops reading does not stall the datapath: the frames
// keep flowing (all counted by the switch), the capture ring drops what it
// cannot hold and says so in the next batch.
func TestCaptureStalledReader(t *testing.T) {
	n, path, stop, peer := servePeer(t)
	cs, err := server.StartCapture(path, control.CaptureRequest{Slots: 8, Snaplen: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	const total = 2000
	frames := make([][]byte, 50)
	for i := range frames {
		frames[i] = strayFrame(9)
	}
	sent := 0
	deadline := time.Now().Add(20 * time.Second)
	for sent < total && time.Now().Before(deadline) {
		w, err := peer.Write(frames)
		if err != nil {
			t.Fatal(err)
		}
		sent += w
		if w == 0 {
			time.Sleep(time.Millisecond) // the memif queue is full: let the worker drain it
		}
	}
	var st uint64
	for time.Now().Before(deadline) {
		s, err := n.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st = s.Switch.Packets; st >= uint64(sent) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st != uint64(sent) {
		t.Fatalf("the switch read %d of %d frames while the capture client slept", st, sent)
	}
	var h capture.BatchHeader
	for h.Matched < 2*uint64(sent) && time.Now().Before(deadline) {
		if h, err = cs.Next(func(*capture.Record) {}); err != nil {
			t.Fatal(err)
		}
	}
	// device-rx and drop-rx of each frame: 2 per frame, most dropped by a ring of 8.
	if h.Matched != 2*uint64(sent) || h.Drops == 0 || h.Drops > h.Matched {
		t.Errorf("batch counters %+v after %d frames", h, sent)
	}
	t.Logf("%d frames; capture matched %d, ring dropped %d", sent, h.Matched, h.Drops)
	cs.Close()
	stop()
}

// A stalled capture client does not slow the datapath: the time the
// nexus takes to read a burst of frames with a capture whose client reads
// nothing stays within 4× of the same burst without a capture (the
// capture's copies cost some; blocking on its reader would cost it all),
// best of three alternations each.
func TestCaptureRateHolds(t *testing.T) {
	n, path, stop, peer := servePeer(t)
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = strayFrame(9)
	}
	const burst = 20000
	var read uint64 // frames the switch read so far
	run := func() time.Duration {
		t.Helper()
		start := time.Now()
		deadline := start.Add(30 * time.Second)
		sent := 0
		for sent < burst {
			w, err := peer.Write(frames[:min(len(frames), burst-sent)])
			if err != nil {
				t.Fatal(err)
			}
			sent += w
			if w == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the nexus took only %d of %d frames in 30 s", sent, burst)
				}
				time.Sleep(100 * time.Microsecond) // the wire is full: the worker drains it
			}
		}
		read += burst
		for {
			st, err := n.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Switch.Packets >= read {
				return time.Since(start)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the switch read %d of %d frames in 30 s", st.Switch.Packets, read)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	best := func(d *time.Duration, x time.Duration) {
		if *d == 0 || x < *d {
			*d = x
		}
	}
	var without, with time.Duration
	var cs *server.CaptureStream
	for range 3 {
		best(&without, run())
		var err error
		if cs, err = server.StartCapture(path, control.CaptureRequest{Slots: 64}); err != nil {
			t.Fatal(err)
		}
		best(&with, run())
		// Now read: the batches queued in the socket, then the later ones
		// until the counters cover the burst (device-rx and drop-rx).
		var h capture.BatchHeader
		for h.Matched < 2*burst {
			if h, err = cs.Next(func(*capture.Record) {}); err != nil {
				t.Fatal(err)
			}
		}
		if h.Drops == 0 {
			t.Errorf("a ring of 64 frames took %d frames from a stalled client without a drop", h.Matched)
		}
		t.Logf("with capture %v (capture matched %d, dropped %d); without %v", with, h.Matched, h.Drops, without)
		cs.Close()
	}
	if with > 4*without {
		t.Errorf("a burst of %d frames took %v with a stalled capture, %v without: more than 4×", burst, with, without)
	}
	stop()
}
