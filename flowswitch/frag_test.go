package flowswitch_test

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/fuzzbytes"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// rawDrain receives and frees everything on app i's RX ring, returning
// copies of the packets.
func (r *rig) rawDrain(t testing.TB, i int) [][]byte {
	t.Helper()
	var out [][]byte
	bufs := make([]channel.Buf, 64)
	for {
		n, err := r.apps[i].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		for _, b := range bufs[:n] {
			out = append(out, bytes.Clone(b.Data))
		}
		if _, err := r.apps[i].Free(bufs[:n]); err != nil {
			t.Fatal(err)
		}
		r.chans[i].Sync()
	}
}

// TestRxFragments: a 4000-byte UDP datagram, cut in three fragments sent
// last first, reaches the app of its flow as the three fragments in offset
// order, byte for byte, once all are in; one to an unclaimed port goes
// where unclaimed frames go (dropped as NoFlow: no host link); an
// overlapping set is dropped and counted.
func TestRxFragments(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "v4"
		local, remote := localIP, remoteIP
		if v6 {
			name, local, remote = "v6", localIP6, remoteIP6
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, flowswitch.Options{}, channel.Options{})
			k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 7), netip.AddrPort{})
			if _, err := r.sw.Register(r.ports[0], k, flow.Listener3); err != nil {
				t.Fatal(err)
			}
			dgram := func(dport uint16) []byte {
				f := packettest.Frame{Src: netip.AddrPortFrom(remote, 40000), Dst: netip.AddrPortFrom(local, dport),
					Proto: packet.ProtoUDP, Payload: bytes.Repeat([]byte("fragment"), 500), ID: 99}
				return f.Bytes()
			}
			frags := packettest.Fragment(dgram(7), packet.Ethernet, 1440, 99)
			if len(frags) != 3 {
				t.Fatalf("%d fragments", len(frags))
			}
			rev := slices.Clone(frags)
			slices.Reverse(rev)
			r.write(t, rev...)
			r.rxOnce(t, 3)
			got := r.rawDrain(t, 0)
			if len(got) != 3 {
				t.Fatalf("app got %d packets, want the 3 fragments", len(got))
			}
			for i, g := range got {
				if want := frags[i][packettest.EthLen:]; !bytes.Equal(g, want) {
					t.Fatalf("packet %d: %d bytes, not fragment %d (%d bytes)", i, len(g), i, len(want))
				}
			}
			st := r.sw.Stats()
			if st.Reassembled != 1 || st.Delivered != 3 || st.Reassembly.Datagrams != 1 {
				t.Fatalf("stats: reassembled %d delivered %d, %+v", st.Reassembled, st.Delivered, st.Reassembly)
			}

			// Unclaimed: nothing for the app, counted.
			r.write(t, packettest.Fragment(dgram(9), packet.Ethernet, 1440, 100)...)
			r.rxOnce(t, 3)
			if got := r.rawDrain(t, 0); len(got) != 0 || r.sw.Stats().NoFlow != 3 {
				t.Fatalf("unclaimed datagram: app got %d, NoFlow %d", len(got), r.sw.Stats().NoFlow)
			}

			// Overlap: the middle fragment again, 8 bytes later.
			ov := packettest.Fragment(dgram(7), packet.Ethernet, 1440, 101)
			mid := slices.Clone(ov[1])
			var p packet.Parsed
			if err := packet.Parse(mid, packet.Ethernet, &p); err != nil {
				t.Fatal(err)
			}
			if v6 {
				mid[p.L4Off-5] += 8 // offset + 8 bytes (its low 3 bits are flags)
			} else {
				mid[packettest.EthLen+7]++
			}
			r.write(t, ov[0], mid, ov[1], ov[2])
			r.rxOnce(t, 4)
			if got := r.rawDrain(t, 0); len(got) != 0 {
				t.Fatalf("an overlapping set reached the app: %d packets", len(got))
			}
			if st := r.sw.Stats(); st.Reassembly.Overlaps == 0 {
				t.Fatalf("overlap not counted: %+v", st.Reassembly)
			}
			snap := r.sw.Snapshot()
			found := false
			for _, d := range snap.Drops {
				found = found || d.Reason == "frag_overlap" && d.Packets > 0
			}
			if !found {
				t.Fatal("no frag_overlap drop in the snapshot")
			}
		})
	}
}

// TestRxICMPError: an ICMP "fragmentation needed" from a router, quoting a
// packet the app sent, reaches that app; an echo request to the same
// address does not (the kernel's), nor does an error quoting a packet of
// another host.
func TestRxICMPError(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	e := r.register(t, 0, 6000, 5000) // UDP 198.18.0.1:5000 ↔ 198.19.0.2:6000
	sent := packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(localIP, 5000),
		Dst: netip.AddrPortFrom(remoteIP, 6000), Proto: packet.ProtoUDP, Size: 1400}
	router := netip.MustParseAddr("198.19.9.9")
	icmp := func(to netip.Addr, typ byte) []byte {
		f := packettest.Frame{Src: netip.AddrPortFrom(router, 1), Dst: netip.AddrPortFrom(to, 1),
			Proto: packet.ProtoICMP, Payload: sent.Bytes()[:28]}
		b := f.Bytes()
		b[packettest.EthLen+packettest.IPv4Len] = typ // checksums are not the switch's business
		b[packettest.EthLen+packettest.IPv4Len+1] = 4
		return b
	}
	r.write(t, icmp(localIP, 3), icmp(localIP, 8), icmp(netip.MustParseAddr("198.18.0.7"), 3))
	r.rxOnce(t, 3)
	got := r.rawDrain(t, 0)
	if len(got) != 1 || got[0][packettest.IPv4Len] != 3 {
		t.Fatalf("app got %d packets, want the one error", len(got))
	}
	if st := r.sw.Stats(); st.ICMPErrors != 1 || st.NoFlow != 2 {
		t.Fatalf("ICMPErrors %d NoFlow %d, want 1 and 2", st.ICMPErrors, st.NoFlow)
	}
	var in uint64
	r.sw.Do(func() { in = e.Counters().PacketsIn })
	if in != 1 {
		t.Fatalf("flow counted %d packets in, want 1", in)
	}
}

// TestTxFragments: an app's datagram in three fragments reaches the wire
// whole, on its flow; a later fragment of a datagram the port did not
// start, or sent by another port, or with another flow's ID, does not.
func TestTxFragments(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	dg := packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(localIP, 5000), Dst: netip.AddrPortFrom(remoteIP, 6000),
		Proto: packet.ProtoUDP, Payload: bytes.Repeat([]byte("x"), 3000), ID: 7}
	frags := packettest.Fragment(dg.Bytes(), packet.RawIP, 1400, 0)
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	other := packettest.Fragment((&packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(localIP, 5000),
		Dst: netip.AddrPortFrom(remoteIP, 6000), Proto: packet.ProtoUDP, Size: 3000, ID: 8}).Bytes(), packet.RawIP, 1400, 0)
	r.send(t, 0, f.udp0.ID(), frags...)
	r.send(t, 0, f.udp0.ID(), other[1]) // its first fragment never sent
	r.send(t, 0, f.tcp0.ID(), frags[2]) // the right datagram, another flow's ID
	r.send(t, 1, f.udp1.ID(), frags[1]) // another port
	r.tx(t, 0)
	r.tx(t, 1)
	wire := r.wire(t)
	if len(wire) != 3 {
		t.Fatalf("%d frames on the wire, want the 3 fragments", len(wire))
	}
	for i, w := range wire {
		if !bytes.Equal(w[packettest.EthLen:], frags[i]) {
			t.Fatalf("frame %d is not fragment %d", i, i)
		}
	}
	if d := r.sw.Stats().TxDrops; d.Fragment != 3 {
		t.Fatalf("TxDrops.Fragment = %d, want 3 (%+v)", d.Fragment, d)
	}
}

// FuzzRxFragments feeds the switch fragments of UDP datagrams to a claimed
// port and to an unclaimed one, both families, at any offsets, lengths,
// flags and identifications, and checks what the app gets: only whole
// datagrams of its flow, each as fragments that tile it in order, without
// gap or overlap (the invariant of the package doc), or unfragmented packets.
func FuzzRxFragments(f *testing.F) {
	f.Add([]byte{0, 1, 0, 180, 1, 1, 1, 180, 0, 1, 2, 100, 2})
	f.Add([]byte{3, 5, 0, 90, 1, 3, 5, 1, 90, 0, 7, 5, 0, 90, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newRig(t, flowswitch.Options{}, channel.Options{})
		for _, a := range []netip.Addr{localIP, localIP6} {
			k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(a, 7), netip.AddrPort{})
			if _, err := r.sw.Register(r.ports[0], k, flow.Listener3); err != nil {
				t.Fatal(err)
			}
		}
		in := fuzzbytes.New(data)
		var frames [][]byte
		for !in.Done() && len(frames) < 64 {
			op := in.Byte()
			local, remote := localIP, remoteIP
			if op&1 != 0 {
				local, remote = localIP6, remoteIP6
			}
			dport := uint16(7)
			if op&2 != 0 {
				dport = 9
			}
			id := uint32(in.Byte() & 3)
			idx := int(in.Byte() % 8)
			size := 8 + int(in.Byte())*8
			dg := packettest.Frame{Src: netip.AddrPortFrom(remote, 40000), Dst: netip.AddrPortFrom(local, dport),
				Proto: packet.ProtoUDP, Payload: bytes.Repeat([]byte{byte(id)}, 1200), ID: uint16(id)}
			frs := packettest.Fragment(dg.Bytes(), packet.Ethernet, size, id)
			if len(frs) == 0 {
				continue
			}
			fr := slices.Clone(frs[idx%len(frs)])
			if c := in.Byte(); c&0x80 != 0 { // a corrupt offset or MF flag
				var p packet.Parsed
				if packet.Parse(fr, packet.Ethernet, &p) == nil {
					if p.IPVersion == 4 {
						fr[packettest.EthLen+7] ^= c & 0x7f
					} else {
						fr[p.L4Off-5] ^= c & 0x7f
					}
				}
			}
			frames = append(frames, fr)
		}
		for len(frames) > 0 {
			n := min(len(frames), flowswitch.DefaultBatch)
			r.write(t, frames[:n]...)
			frames = frames[n:]
			if _, err := r.sw.RxOnce(); err != nil {
				t.Fatal(err)
			}
		}
		// What the app got: runs of fragments, each a whole datagram.
		at, id := 0, uint32(0)
		for i, b := range r.rawDrain(t, 0) {
			var p packet.Parsed
			if err := packet.Parse(b, packet.RawIP, &p); err != nil {
				t.Fatalf("packet %d: %v", i, err)
			}
			if !p.IsFragment() { // a datagram that fit one frame
				if at != 0 {
					t.Fatalf("packet %d interleaves a datagram's fragments", i)
				}
				continue
			}
			if p.FragOff == 0 {
				if at != 0 {
					t.Fatalf("packet %d starts a datagram before the last one ended", i)
				}
				if !p.HasL4 || p.DstPort != 7 {
					t.Fatalf("packet %d: a datagram to port %d reached the app", i, p.DstPort)
				}
				id = p.ID
			}
			if int(p.FragOff) != at || p.ID != id {
				t.Fatalf("packet %d: offset %d id %d, want %d id %d", i, p.FragOff, p.ID, at, id)
			}
			at += p.L3Off + p.IPLen - p.L4Off
			if !p.MoreFrags {
				at = 0
			}
		}
		if at != 0 {
			t.Fatal("the app got part of a datagram")
		}
	})
}
