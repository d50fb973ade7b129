package flowswitch_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/pool"
)

// TestRxSuper: from a link that carries super packets, a TCP super packet
// reaches a channel with 16 KiB buffers whole, byte for byte, and a
// channel with 2 KiB buffers in pieces that fit, each a valid TCP packet
// (gopacket) carrying whole wire MSS, which add up to it; one with a bad
// checksum is not cut (SplitCsumDrops).
func TestRxSuper(t *testing.T) {
	max := pool.MaxBufferSize + netif.EthernetHeaderLen
	a, b, err := memif.NewPair(memif.Options{MaxSuperPacketLen: max, QueueLen: 64, FullChecksums: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}})
	if err != nil {
		t.Fatal(err)
	}
	var apps []*channel.App
	var ports []flow.PortID
	for _, size := range []int{pool.MaxBufferSize, 2048} {
		ch, app := newChannel(t, channel.Options{Name: "rx", Pool: pool.Options{BufferSize: size, SegmentSize: 16 * size}})
		apps, ports = append(apps, app), append(ports, sw.AddPort(ch))
	}
	payload := make([]byte, 12000)
	for i := range payload {
		payload[i] = byte(i*17 + 3)
	}
	frame := func(lport uint16) []byte {
		f := packettest.Frame{Src: netip.AddrPortFrom(remoteIP, 8000), Dst: netip.AddrPortFrom(localIP, lport),
			Proto: packet.ProtoTCP, Seq: 5000, ID: 9, Flags: packet.TCPAck | packet.TCPPsh, Payload: payload}
		return f.Bytes()
	}
	for i, lport := range []uint16{7000, 7001} {
		if _, err := sw.Register(ports[i], packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, lport), netip.AddrPortFrom(remoteIP, 8000)), flow.Connected); err != nil {
			t.Fatal(err)
		}
	}
	whole, split := frame(7000), frame(7001)
	bad := frame(7001)
	bad[len(bad)-1] ^= 1
	peer := b.(netif.SuperPacketLink)
	if n, err := peer.WriteGSO([][]byte{whole, split, bad}, []int{1460, 1460, 1460}); n != 3 || err != nil {
		t.Fatalf("WriteGSO = %d, %v", n, err)
	}
	if n, err := sw.RxOnce(); n != 3 || err != nil {
		t.Fatalf("RxOnce = %d, %v", n, err)
	}
	recv := func(app *channel.App) [][]byte {
		bufs := make([]channel.Buf, 64)
		n, err := app.Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for _, b := range bufs[:n] {
			out = append(out, append([]byte(nil), b.Data...))
		}
		if _, err := app.Free(bufs[:n]); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := recv(apps[0]); len(got) != 1 || !bytes.Equal(got[0], whole[14:]) {
		t.Fatalf("16 KiB channel got %d packets, want the super packet whole", len(got))
	}
	pieces := recv(apps[1])
	var joined []byte
	seq := uint32(5000)
	for i, pc := range pieces {
		if len(pc) > 2048 {
			t.Fatalf("piece %d: %d bytes", i, len(pc))
		}
		g := gopacket.NewPacket(pc, layers.LayerTypeIPv4, gopacket.Default)
		ip, _ := g.NetworkLayer().(*layers.IPv4)
		tcp, _ := g.TransportLayer().(*layers.TCP)
		if ip == nil || tcp == nil {
			t.Fatalf("piece %d: %v", i, g)
		}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		if err, r := tcp.VerifyChecksum(); err != nil || !r.Valid || tcp.Seq != seq {
			t.Fatalf("piece %d: checksum valid %v, seq %d want %d", i, r.Valid, tcp.Seq, seq)
		}
		if i < len(pieces)-1 && len(tcp.Payload)%1460 != 0 {
			t.Errorf("piece %d: %d payload bytes, not whole MSS", i, len(tcp.Payload))
		}
		seq += uint32(len(tcp.Payload))
		joined = append(joined, tcp.Payload...)
	}
	if !bytes.Equal(joined, payload) {
		t.Fatalf("%d pieces do not add up to the super packet", len(pieces))
	}
	st := sw.Stats()
	if st.Split != 1 || st.SplitPieces != uint64(len(pieces)) || st.SplitCsumDrops != 1 || st.Oversize != 0 || st.SuperPackets != 1 {
		t.Errorf("split %d into %d, csum drops %d, oversize %d, whole %d", st.Split, st.SplitPieces, st.SplitCsumDrops, st.Oversize, st.SuperPackets)
	}
}

// FuzzRxSuper reads arbitrary super packets (a valid one's first bytes
// overwritten by the fuzzer's) from a link that carries them, into a
// channel whose buffers are too small for them: the switch never panics
// and delivers only packets that fit the buffers.
func FuzzRxSuper(f *testing.F) {
	f.Add([]byte{}, 3000)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0x45, 0, 0x0f}, 9000)
	f.Fuzz(func(t *testing.T, hdr []byte, size int) {
		size = min(max(size, 100), pool.MaxBufferSize)
		a, b, err := memif.NewPair(memif.Options{MaxSuperPacketLen: pool.MaxBufferSize + netif.EthernetHeaderLen, QueueLen: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := channel.New(channel.Options{Name: "rx", Pool: pool.Options{BufferSize: 2048}})
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		app, err := ch.AttachLocal()
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		port := sw.AddPort(ch)
		if _, err := sw.Register(port, packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 7000), netip.AddrPortFrom(remoteIP, 8000)), flow.Connected); err != nil {
			t.Fatal(err)
		}
		fr := packettest.Frame{Src: netip.AddrPortFrom(remoteIP, 8000), Dst: netip.AddrPortFrom(localIP, 7000),
			Proto: packet.ProtoTCP, Payload: make([]byte, size)}
		pkt := fr.Bytes()
		copy(pkt, hdr)
		if n, _ := b.Write([][]byte{pkt}); n != 1 {
			return // memif refused it: not a super packet
		}
		if _, err := sw.RxOnce(); err != nil {
			t.Fatal(err)
		}
		bufs := make([]channel.Buf, 64)
		n, err := app.Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bufs[:n] {
			if len(b.Data) > 2048 {
				t.Fatalf("a %d-byte packet in a 2048-byte buffer", len(b.Data))
			}
		}
	})
}

// A super packet cut for a small buffer is verified from its pieces'
// checksums: intact, every piece decodes with valid checksums (gopacket)
// and the payload reassembles; one flipped payload byte, and the whole
// super packet is dropped (SplitCsumDrops), whatever the piece alignment
// (an odd MSS puts every other piece's payload at an odd offset).
func TestRxSplitVerifiesChecksum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mtu     int
		v6      bool
		payload int
		corrupt int // payload byte to flip; -1: none
	}{
		{"v4/even-mss", 1500, false, 12000, -1},
		{"v4/odd-mss", 1501, false, 12001, -1},
		{"v6/odd-mss", 1501, true, 9999, -1},
		{"v4/even-mss/corrupt", 1500, false, 12000, 7000},
		{"v4/odd-mss/corrupt-odd", 1501, false, 12001, 1462},
		{"v6/odd-mss/corrupt-last", 1501, true, 9999, 9998},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b, err := memif.NewPair(memif.Options{MTU: tc.mtu, MaxSuperPacketLen: pool.MaxBufferSize + netif.EthernetHeaderLen, QueueLen: 4, FullChecksums: true})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			local, remote := localIP, remoteIP
			if tc.v6 {
				local, remote = localIP6, remoteIP6
			}
			sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{local}})
			if err != nil {
				t.Fatal(err)
			}
			ch, app := newChannel(t, channel.Options{Name: "split", Pool: pool.Options{BufferSize: 2048}})
			port := sw.AddPort(ch)
			if _, err := sw.Register(port, packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 7000), netip.AddrPortFrom(remote, 8000)), flow.Connected); err != nil {
				t.Fatal(err)
			}
			payload := make([]byte, tc.payload)
			for i := range payload {
				payload[i] = byte(i*7 + i>>8)
			}
			fr := packettest.Frame{Src: netip.AddrPortFrom(remote, 8000), Dst: netip.AddrPortFrom(local, 7000),
				Proto: packet.ProtoTCP, Flags: packet.TCPAck, Seq: 1000, Payload: payload}
			pkt := fr.Bytes()
			if tc.corrupt >= 0 {
				pkt[len(pkt)-tc.payload+tc.corrupt] ^= 0x5a
			}
			if n, err := b.Write([][]byte{pkt}); n != 1 {
				t.Fatalf("memif took %d: %v", n, err)
			}
			if _, err := sw.RxOnce(); err != nil {
				t.Fatal(err)
			}
			bufs := make([]channel.Buf, 64)
			n, err := app.Receive(bufs)
			if err != nil {
				t.Fatal(err)
			}
			st := sw.Stats()
			if tc.corrupt >= 0 {
				if n != 0 || st.SplitCsumDrops != 1 || st.Split != 0 {
					t.Fatalf("corrupt super packet: %d pieces delivered, csum drops %d, split %d", n, st.SplitCsumDrops, st.Split)
				}
				return
			}
			if n < 2 || st.Split != 1 || st.SplitCsumDrops != 0 {
				t.Fatalf("%d pieces, split %d, csum drops %d", n, st.Split, st.SplitCsumDrops)
			}
			var got []byte
			for _, pb := range bufs[:n] {
				p := packettest.Decode(t, pb.Data, packet.RawIP)
				got = append(got, p.TransportLayer().LayerPayload()...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("pieces' payload does not reassemble the super packet's")
			}
		})
	}
}
