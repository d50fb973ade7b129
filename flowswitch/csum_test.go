package flowswitch_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
)

// zeroL4Csum clears the TCP or UDP checksum of the raw IPv4 packet b (no
// IP options), as gVisor leaves it with TX checksum offload.
func zeroL4Csum(b []byte) []byte {
	c := append([]byte(nil), b...)
	at := 20 + 6
	if c[9] == packet.ProtoTCP {
		at = 20 + 16
	}
	c[at], c[at+1] = 0, 0
	return c
}

// Packets an app sends with FlagCsumPartial leave complete on a device
// link (here a memif wire with FullChecksums, not a netif.TrustedWire),
// and as the app left them on a trusted wire. A packet without the flag
// is never touched.
func TestTxCsumPartial(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		name := map[bool]string{false: "device", true: "trusted"}[trusted]
		t.Run(name, func(t *testing.T) {
			a, b, err := memif.NewPair(memif.Options{QueueLen: 64, FullChecksums: !trusted})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}, SrcMAC: txSrcMAC, DstMAC: txDstMAC})
			if err != nil {
				t.Fatal(err)
			}
			r := &rig{sw: sw, peer: b}
			for range 2 {
				ch, app := newChannel(t, channel.Options{Name: "tx"})
				r.chans, r.apps, r.ports = append(r.chans, ch), append(r.apps, app), append(r.ports, sw.AddPort(ch))
			}
			f := r.txFlows(t)
			udp := udp0Pkt(301).build(t) // odd length: the last byte pads the sum
			tcp := txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 7000, dport: 8000, size: 1000}.build(t)
			if !packet.ChecksumsValid(udp) || !packet.ChecksumsValid(tcp) {
				t.Fatal("test packets do not verify")
			}
			r.txFlags = channel.FlagCsumPartial
			r.send(t, 0, f.udp0.ID(), zeroL4Csum(udp))
			r.send(t, 0, f.tcp0.ID(), zeroL4Csum(tcp))
			r.txFlags = 0
			r.send(t, 0, f.tcp0.ID(), zeroL4Csum(tcp)) // the app's own business
			if n := r.tx(t, 0); n != 3 {
				t.Fatalf("took %d, want 3", n)
			}
			frames := r.wire(t)
			if len(frames) != 3 {
				t.Fatalf("%d frames on the wire, want 3", len(frames))
			}
			want := [][]byte{udp, tcp, zeroL4Csum(tcp)}
			completed := uint64(2)
			if trusted {
				want[0], want[1], completed = zeroL4Csum(udp), zeroL4Csum(tcp), 0
			}
			for i, fr := range frames {
				if !bytes.Equal(fr[netif.EthernetHeaderLen-4:], want[i]) {
					t.Errorf("frame %d: L3 bytes %x, want %x", i, fr[14:14+40], want[i][:40])
				}
			}
			if st := sw.Stats(); st.TxCsumCompleted != completed || st.TxPackets != 3 {
				t.Errorf("TxCsumCompleted %d, TxPackets %d; want %d, 3", st.TxCsumCompleted, st.TxPackets, completed)
			}
		})
	}
}

// What the switch reads from a trusted wire reaches the app marked
// FlagCsumValid; what it reads from a device carries no flag, so the app
// verifies it.
func TestRxCsumValid(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		name := map[bool]string{false: "device", true: "trusted"}[trusted]
		t.Run(name, func(t *testing.T) {
			a, b, err := memif.NewPair(memif.Options{QueueLen: 64, FullChecksums: !trusted})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}})
			if err != nil {
				t.Fatal(err)
			}
			ch, app := newChannel(t, channel.Options{Name: "rx"})
			r := &rig{sw: sw, peer: b, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{sw.AddPort(ch)}}
			r.register(t, 0, 9000, 53)
			r.write(t, udpFrame(t, 9000, 53, "x", 100))
			r.rxOnce(t, 1)
			bufs := make([]channel.Buf, 4)
			n, err := app.Receive(bufs)
			if err != nil || n != 1 {
				t.Fatalf("Receive = %d, %v", n, err)
			}
			want := uint16(0)
			if trusted {
				want = channel.FlagCsumValid
			}
			if bufs[0].Flags != want {
				t.Errorf("flags %#x, want %#x", bufs[0].Flags, want)
			}
			if _, err := app.Free(bufs[:n]); err != nil {
				t.Fatal(err)
			}
		})
	}
}
