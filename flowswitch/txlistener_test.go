package flowswitch_test

import (
	"bytes"
	"testing"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
)

// A listener answers handshakes on its own flow: SYN-ACKs to any number of
// remotes (a SYN flood answered with SYN cookies) pass, without a flow per
// connection and without the SYN budget of connected flows, on the full
// path and on the fast path (the port's cache holding the listener), each
// on the wire byte for byte. The same SYN-ACKs on a connected flow are
// still held to its SYN budget.
func TestTxListenerSYNACK(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	const n = 5 * flow.SYNBurst
	pkts := make([][]byte, n)
	for i := range pkts {
		p := lisPkt(localIP, 80, packet.TCPSyn|packet.TCPAck, 40)
		p.dport += uint16(i)
		pkts[i] = p.build(t)
	}
	// A RST first, so the listener is the port's cache for the rest.
	rst := lisPkt(localIP, 80, packet.TCPRst|packet.TCPAck, 40).build(t)
	r.send(t, 0, f.listen.ID(), rst)
	r.send(t, 0, f.listen.ID(), pkts...)
	if k := r.tx(t, 0); k != n+1 {
		t.Fatalf("took %d, want %d", k, n+1)
	}
	frames := r.wire(t)
	if len(frames) != n+1 {
		t.Fatalf("%d frames on the wire, want %d", len(frames), n+1)
	}
	for i, fr := range frames[1:] {
		if !bytes.Equal(fr[14:], pkts[i]) {
			t.Fatalf("frame %d is not the SYN-ACK sent", i)
		}
	}
	st := r.sw.Stats()
	if st.TxDrops != (flowswitch.TxDrops{}) || st.TxPackets != n+1 {
		t.Errorf("drops %+v, %d packets; want none, %d", st.TxDrops, st.TxPackets, n+1)
	}
	if c := f.listen.Counters(); c.PacketsOut != n+1 {
		t.Errorf("listener counted %d packets out, want %d", c.PacketsOut, n+1)
	}
	if got := r.sw.Table().Len(); got != 4 {
		t.Errorf("%d flows after the handshakes, want the 4 registered", got)
	}

	// On a connected flow a SYN-ACK is a SYN: budgeted.
	synAck := txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 7000, dport: 8000,
		flags: packet.TCPSyn | packet.TCPAck, size: 40}.build(t)
	for i := range pkts {
		pkts[i] = synAck
	}
	r.send(t, 0, f.tcp0.ID(), pkts...)
	r.tx(t, 0)
	passed := len(r.wire(t))
	if d := r.sw.Stats().TxDrops; passed > flow.SYNBurst+1 || d.SYNRate != uint64(n-passed) {
		t.Errorf("connected flow: %d SYN-ACKs passed, drops %+v; want at most %d, the rest SYNRate", passed, d, flow.SYNBurst+1)
	}
}
