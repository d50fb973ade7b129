package client_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// streamByte is byte off of a test stream: it changes with every byte and
// every 256, so a lost, repeated or reordered segment shows.
func streamByte(off int64) byte { return byte(off) ^ byte(off>>8)*7 ^ byte(off>>16)*13 }

// writeStream writes the test stream to c: n bytes then close, or until a
// write fails when n < 0.
func writeStream(c net.Conn, n int64) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	for off := int64(0); n < 0 || off < n; {
		k := int64(len(buf))
		if n >= 0 {
			k = min(k, n-off)
		}
		for i := range k {
			buf[i] = streamByte(off + i)
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
		off += k
	}
}

var errCorrupt = errors.New("stream corrupt")

// readStream reads c to its end, checking every byte against the test
// stream and counting them in got; mark is closed once mid bytes arrived.
func readStream(c net.Conn, got *atomic.Int64, mid int64, mark chan<- struct{}) error {
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := c.Read(buf)
		for i := range n {
			if buf[i] != streamByte(off+int64(i)) {
				return fmt.Errorf("%w: byte %d is %#x, want %#x", errCorrupt, off+int64(i), buf[i], streamByte(off+int64(i)))
			}
		}
		off += int64(n)
		got.Store(off)
		if mark != nil && off >= mid {
			close(mark)
			mark = nil
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// TestAdvisoryHoldsTCP suspends a TCP flow mid-transfer at the sender's
// nexus (Nexus.Advise, as the regulating queue would) while a second flow
// of the same stack keeps sending:
//
//   - once the endpoint has held a packet of the flow, no packet of the flow
//     reaches the nexus any more, while the other flow moves thousands of
//     packets through the same TX ring;
//   - after the resume the transfer completes, every byte intact and in
//     order, with nothing dropped by the endpoint's hold or by the nexus.
func TestAdvisoryHoldsTCP(t *testing.T) {
	w := newWorld(t)
	const xLen = 8 << 20
	lnX, err := w.sa.Listen("tcp", "198.18.0.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	defer lnX.Close()
	lnY, err := w.sa.Listen("tcp", "198.18.0.1:5002")
	if err != nil {
		t.Fatal(err)
	}
	defer lnY.Close()
	for ln, n := range map[net.Listener]int64{lnX: xLen, lnY: -1} {
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			writeStream(c, n)
		}()
	}
	keyOf := func(c net.Conn) packet.Key {
		la := c.LocalAddr().(*net.TCPAddr).AddrPort()
		ra := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		// Oriented to the sender, A: local is A's listening end.
		return packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port()), netip.AddrPortFrom(la.Addr().Unmap(), la.Port()))
	}
	cX, err := w.sb.Dial("tcp", "198.18.0.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	defer cX.Close()
	cY, err := w.sb.Dial("tcp", "198.18.0.1:5002")
	if err != nil {
		t.Fatal(err)
	}
	defer cY.Close()
	keyX := keyOf(cX)

	var gotX, gotY atomic.Int64
	midX := make(chan struct{})
	doneX, doneY := make(chan error, 1), make(chan error, 1)
	go func() { doneX <- readStream(cX, &gotX, 1<<20, midX) }()
	go func() { doneY <- readStream(cY, &gotY, 0, nil) }()
	ep := w.sa.Endpoint()
	portTx := func() uint64 {
		st, err := w.na.Stats()
		if err != nil || len(st.Ports) != 1 {
			t.Fatalf("nexus a stats: %v, %d ports", err, len(st.Ports))
		}
		return st.Ports[0].Channel.TxPackets
	}
	flowOut := func() uint64 {
		fs, err := w.na.Flow(keyX)
		if err != nil {
			t.Fatal(err)
		}
		return fs.Counters.PacketsOut
	}

	select {
	case <-midX:
	case err := <-doneX:
		t.Fatalf("flow X ended before 1 MiB: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("flow X: %d bytes in 30 s", gotX.Load())
	}
	if err := w.na.Advise(keyX, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the endpoint holds a packet of the suspended flow", func() bool {
		return ep.Stats().TxHeld > 0
	})
	// What of X can still reach the nexus was copied before the first
	// hold: on the TX ring (DefaultTxSize slots at most) or filled and
	// waiting for it (within Held). Both are FIFO, and every packet the
	// endpoint fills from now on is Y's, behind them: once the nexus has
	// taken that many packets more, X's count is final.
	bound := portTx() + channel.DefaultTxSize + uint64(ep.Held()) + 1
	eventually(t, 30*time.Second, "flow Y drains the TX ring while X is held", func() bool { return portTx() >= bound })
	outX, y0, tx0 := flowOut(), gotY.Load(), portTx()
	eventually(t, 30*time.Second, "flow Y sends 1000 packets more while X is held", func() bool {
		return portTx() >= tx0+1000 && gotY.Load() > y0
	})
	if got := flowOut(); got != outX {
		t.Fatalf("suspended flow X: %d packets reached the nexus while held (%d → %d)", got-outX, outX, got)
	}
	if flows, pkts := ep.Suspended(); flows != 1 || pkts == 0 {
		t.Fatalf("endpoint holds %d flows, %d packets; want X's", flows, pkts)
	}
	heldX := gotX.Load()

	if err := w.na.Advise(keyX, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-doneX:
		if err != nil {
			t.Fatalf("flow X after resume: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("flow X: %d of %d bytes 60 s after the resume", gotX.Load(), xLen)
	}
	if gotX.Load() != xLen {
		t.Fatalf("flow X: %d bytes, want %d", gotX.Load(), xLen)
	}
	st := ep.Stats()
	if st.TxHeldDrops != 0 || st.TxHeldSent != st.TxHeld || st.FlowsResumed == 0 || st.AdvisoryEvents < 2 {
		t.Fatalf("endpoint: held %d, sent %d, dropped %d, resumed %d flows, %d advisory events",
			st.TxHeld, st.TxHeldSent, st.TxHeldDrops, st.FlowsResumed, st.AdvisoryEvents)
	}
	if flows, pkts := ep.Suspended(); flows != 0 || pkts != 0 {
		t.Fatalf("after the resume the endpoint still holds %d flows, %d packets", flows, pkts)
	}
	ns, err := w.na.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ns.Switch.TxDrops != (flowswitch.TxDrops{}) {
		t.Fatalf("nexus a dropped packets of the endpoint: %+v", ns.Switch.TxDrops)
	}
	if c := ns.Ports[0].Channel; c.Suspends != 1 || c.Resumes != 1 {
		t.Fatalf("channel counters: %d suspends, %d resumes", c.Suspends, c.Resumes)
	}
	t.Logf("X held at %d bytes: %d packets held and sent after the resume (%d flows held); Y moved %d bytes meanwhile",
		heldX, st.TxHeld, st.FlowsHeld, gotY.Load())
	t.Logf("link a: %+v", ns.Link)
	cY.Close()
	if err := <-doneY; errors.Is(err, errCorrupt) {
		t.Fatalf("flow Y: %v", err)
	}
}

// TestRegulatedTCP runs a bulk TCP transfer through a nexus whose
// transmit queue is the regulation layer's AQM, paced at a link rate the
// stack can overrun many times over: the queue suspends the flow, the
// endpoint holds it back, and the transfer completes with every byte
// intact and no packet lost at the nexus's queue (no CoDel, overflow or
// early drop), nor in the endpoint's hold.
func TestRegulatedTCP(t *testing.T) {
	const (
		rate = 20_000_000 // bits/s: 2.5 MB/s
		size = 4 << 20
	)
	w := newWorldWith(t, nexus.Options{Switch: flowswitch.Options{
		Regulation: &flowswitch.RegulationOptions{}, LinkRate: rate,
	}})
	ln, err := w.sa.Listen("tcp", "198.18.0.1:5003")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		writeStream(c, size)
	}()
	c, err := w.sb.Dial("tcp", "198.18.0.1:5003")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got atomic.Int64
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- readStream(c, &got, 0, nil) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%d of %d bytes after 60 s", got.Load(), size)
	}
	el := time.Since(start)
	if got.Load() != size {
		t.Fatalf("%d bytes, want %d", got.Load(), size)
	}
	ns, err := w.na.Stats()
	if err != nil {
		t.Fatal(err)
	}
	rg, q, st := ns.Switch.Regulation, ns.Switch.Regulation.Queue, w.sa.Endpoint().Stats()
	t.Logf("%d bytes in %v (%.1f Mbit/s, link %d Mbit/s); queue: %d enqueued, %d suspends, %d resumes, %d back-pressured rounds; endpoint: %d held, %d events",
		size, el.Round(time.Millisecond), float64(size)*8/el.Seconds()/1e6, rate/1_000_000,
		q.Enqueued, rg.Suspends, rg.Resumes, rg.Backpressured, st.TxHeld, st.AdvisoryEvents)
	if q.CoDelDrops != 0 || q.OverflowDrops != 0 || q.EarlyDrops != 0 {
		t.Fatalf("the queue dropped an advisory flow's packets: %d CoDel, %d overflow, %d early", q.CoDelDrops, q.OverflowDrops, q.EarlyDrops)
	}
	if rg.Suspends == 0 || st.TxHeld == 0 || st.TxHeldDrops != 0 || st.TxHeldSent != st.TxHeld {
		t.Fatalf("not held back as it should be: %d suspends; endpoint held %d, sent %d, dropped %d",
			rg.Suspends, st.TxHeld, st.TxHeldSent, st.TxHeldDrops)
	}
	if ns.Switch.TxDrops != (flowswitch.TxDrops{}) {
		t.Fatalf("transmit checks dropped: %+v", ns.Switch.TxDrops)
	}
}
