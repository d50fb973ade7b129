package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// The netstack side (local) and its peer, for the window tests.
var (
	wLocal = netip.MustParseAddrPort("198.18.0.1:7")
	wPeer  = netip.MustParseAddrPort("198.18.0.2:40000")
)

// wSeg is a raw IPv4 TCP segment between wLocal and wPeer, from the local
// side if out; window is the window field as sent (0 is a zero window).
func wSeg(out bool, flags packet.TCPFlags, seq, ack uint32, window uint16, opts []byte, payload int) []byte {
	f := packettest.Frame{Link: packet.RawIP, Src: wPeer, Dst: wLocal, Proto: packet.ProtoTCP,
		Seq: seq, Ack: ack, Flags: flags, Window: window, TCPOptions: opts, Payload: make([]byte, payload)}
	if out {
		f.Src, f.Dst = wLocal, wPeer
	}
	b := f.Bytes()
	if window == 0 { // the Frame's zero means 65535: write a real zero, then fix the checksum
		old := binary.BigEndian.Uint16(b[20+14:])
		binary.BigEndian.PutUint16(b[20+14:], 0)
		fixSum16(b[20:], old, 0)
	}
	return b
}

// fixSum16 fixes the checksum of TCP header t for a 16-bit field changed
// from old to new (RFC 1624).
func fixSum16(t []byte, old, new uint16) {
	sum := ^binary.BigEndian.Uint16(t[16:18])
	sum = combine16(sum, ^old)
	sum = combine16(sum, new)
	binary.BigEndian.PutUint16(t[16:18], ^sum)
}

func combine16(a, b uint16) uint16 {
	s := uint32(a) + uint32(b)
	return uint16(s + s>>16)
}

// wsOpt is a TCP window scale option of shift s, padded to 4 bytes.
func wsOpt(s byte) []byte { return []byte{header.TCPOptionNOP, header.TCPOptionWS, 3, s} }

// TestWindowZeroACK: after netstack advertised a window and then a zero
// window whose edge retracted, a pure ACK from inside the first window is
// given netstack's RCV.NXT, with a valid checksum; past a window retracted
// but open, the window's last byte; what must keep its numbers keeps them.
func TestWindowZeroACK(t *testing.T) {
	var w windows
	var p packet.Parsed
	k := packet.MakeKey(packet.ProtoTCP, wLocal, wPeer)
	recv := func(b []byte) bool {
		t.Helper()
		if err := packet.Parse(b, packet.RawIP, &p); err != nil {
			t.Fatal(err)
		}
		if p.RxKey() != k {
			t.Fatalf("key %v, want %v", p.RxKey(), k)
		}
		return w.received(k, b, &p)
	}
	const rcvNxt = 1000
	// Handshake: the peer's SYN, netstack's SYN-ACK with scale 8.
	if recv(wSeg(false, packet.TCPSyn, 1000-1, 0, 65535, wsOpt(7), 0)) {
		t.Fatal("SYN rewritten")
	}
	w.sent(k, wSeg(true, packet.TCPSyn|packet.TCPAck, 5000, rcvNxt, 65535, wsOpt(8), 0)[20:])
	// Window 4 << 8 = 1024 bytes at 1000: edge 2024.
	w.sent(k, wSeg(true, packet.TCPAck, 5001, rcvNxt, 4, nil, 0)[20:])
	ack := wSeg(false, packet.TCPAck, rcvNxt+30, 5001, 100, nil, 0)
	if recv(ack) {
		t.Fatal("ACK rewritten while the window is open")
	}
	// 30 bytes arrive, the window retracts to zero at 1030; the peer had
	// sent 30 more bytes, lost, so its ACKs carry 1060.
	w.sent(k, wSeg(true, packet.TCPAck, 5001, rcvNxt+30, 0, nil, 0)[20:])
	ack = wSeg(false, packet.TCPAck, rcvNxt+60, 5001, 100, nil, 0)
	if !recv(ack) {
		t.Fatal("ACK beyond RCV.NXT in a zero window not rewritten")
	}
	if got := binary.BigEndian.Uint32(ack[20+4:]); got != rcvNxt+30 {
		t.Errorf("seq %d, want RCV.NXT %d", got, rcvNxt+30)
	}
	if tcp, ok := packettest.Decode(t, ack, packet.RawIP).TransportLayer().(*layers.TCP); !ok || tcp.Seq != rcvNxt+30 {
		t.Errorf("decoded %v", tcp)
	}

	// Left alone: data, a FIN, an ACK past the edge ever advertised, an
	// ACK at RCV.NXT already, and anything once the window opened again.
	for name, b := range map[string][]byte{
		"data":            wSeg(false, packet.TCPAck, rcvNxt+60, 5001, 100, nil, 10),
		"FIN":             wSeg(false, packet.TCPAck|packet.TCPFin, rcvNxt+60, 5001, 100, nil, 0),
		"RST":             wSeg(false, packet.TCPAck|packet.TCPRst, rcvNxt+60, 5001, 100, nil, 0),
		"beyond the edge": wSeg(false, packet.TCPAck, rcvNxt+1025, 5001, 100, nil, 0),
		"at RCV.NXT":      wSeg(false, packet.TCPAck, rcvNxt+30, 5001, 100, nil, 0),
		"behind RCV.NXT":  wSeg(false, packet.TCPAck, rcvNxt, 5001, 100, nil, 0),
	} {
		if recv(b) {
			t.Errorf("%s rewritten", name)
		}
	}
	w.sent(k, wSeg(true, packet.TCPAck, 5001, rcvNxt+30, 2, nil, 0)[20:])
	if recv(wSeg(false, packet.TCPAck, rcvNxt+60, 5001, 100, nil, 0)) {
		t.Error("ACK rewritten once the window reopened")
	}

	// A window retracted but not to zero: 2 << 8 at 1030 ends at 1542,
	// before the edge of 2024 advertised first. An ACK past 1542 gets the
	// window's last byte, one inside it keeps its number.
	ack = wSeg(false, packet.TCPAck, rcvNxt+900, 5001, 100, nil, 0)
	if !recv(ack) {
		t.Fatal("ACK past a retracted window not rewritten")
	}
	if got := binary.BigEndian.Uint32(ack[20+4:]); got != rcvNxt+30+512-1 {
		t.Errorf("seq %d, want the window's last byte %d", got, rcvNxt+30+512-1)
	}
	packettest.Decode(t, ack, packet.RawIP)
	if recv(wSeg(false, packet.TCPAck, rcvNxt+30+511, 5001, 100, nil, 0)) {
		t.Error("ACK on the window's last byte rewritten")
	}

	// Gone with the flow; another 5-tuple was never seen.
	w.sent(k, wSeg(true, packet.TCPAck, 5001, rcvNxt+30, 0, nil, 0)[20:])
	w.forget(k)
	if recv(wSeg(false, packet.TCPAck, rcvNxt+60, 5001, 100, nil, 0)) {
		t.Error("ACK of a forgotten connection rewritten")
	}
}

// TestWindowScaleNegotiated: without the peer's window scale option
// netstack's window is not scaled, so the edge is ack + window.
func TestWindowScaleNegotiated(t *testing.T) {
	var w windows
	var p packet.Parsed
	k := packet.MakeKey(packet.ProtoTCP, wLocal, wPeer)
	recv := func(b []byte) bool {
		if err := packet.Parse(b, packet.RawIP, &p); err != nil {
			t.Fatal(err)
		}
		return w.received(k, b, &p)
	}
	// Netstack dials: its SYN offers scale 8, the SYN-ACK has none.
	w.sent(k, wSeg(true, packet.TCPSyn, 5000, 0, 65535, wsOpt(8), 0)[20:])
	recv(wSeg(false, packet.TCPSyn|packet.TCPAck, 999, 5001, 65535, nil, 0))
	w.sent(k, wSeg(true, packet.TCPAck, 5001, 1000, 100, nil, 0)[20:]) // edge 1100, not 1000 + 100<<8
	w.sent(k, wSeg(true, packet.TCPAck, 5001, 1050, 0, nil, 0)[20:])
	if !recv(wSeg(false, packet.TCPAck, 1100, 5001, 100, nil, 0)) {
		t.Error("ACK at the edge not rewritten")
	}
	if recv(wSeg(false, packet.TCPAck, 1101, 5001, 100, nil, 0)) {
		t.Error("ACK past the unscaled edge rewritten: scale applied without the peer's option")
	}
}

// FuzzWindowReceived: whatever a received packet holds, received never
// panics, changes nothing but the sequence number (and the checksum with
// it) when it reports a rewrite, changes nothing otherwise, and keeps a
// valid checksum valid and an invalid one invalid.
func FuzzWindowReceived(f *testing.F) {
	f.Add(wSeg(false, packet.TCPAck, 1060, 5001, 100, nil, 0), uint32(1000), uint16(4)) // rewritten
	f.Add(wSeg(false, packet.TCPAck, 1060, 5001, 100, nil, 10), uint32(1030), uint16(4))
	f.Add(wSeg(false, packet.TCPSyn|packet.TCPAck, 999, 5001, 65535, wsOpt(7), 0), uint32(1000), uint16(0))
	f.Add(wSeg(false, packet.TCPAck|packet.TCPFin, 1060, 5001, 100, nil, 0), uint32(1030), uint16(4))
	f.Fuzz(func(t *testing.T, b []byte, ack uint32, window uint16) {
		var p packet.Parsed
		if packet.Parse(b, packet.RawIP, &p) != nil || !p.HasL4 || p.Proto != packet.ProtoTCP {
			return
		}
		k := p.RxKey()
		var w windows
		// netstack accepted with scale 8, advertised window<<8 at ack,
		// then a zero window 30 bytes on.
		synAck := make([]byte, 24)
		header.TCP(synAck).Encode(&header.TCPFields{SeqNum: 5000, AckNum: ack, DataOffset: 24,
			Flags: header.TCPFlagSyn | header.TCPFlagAck, WindowSize: 65535})
		copy(synAck[20:], wsOpt(8))
		w.sent(k, synAck)
		seg := make([]byte, 20)
		header.TCP(seg).Encode(&header.TCPFields{SeqNum: 5001, AckNum: ack, DataOffset: 20, Flags: header.TCPFlagAck, WindowSize: window})
		w.sent(k, seg)
		header.TCP(seg).Encode(&header.TCPFields{SeqNum: 5001, AckNum: ack + 30, DataOffset: 20, Flags: header.TCPFlagAck})
		w.sent(k, seg)

		orig := bytes.Clone(b)
		valid := tcpSumValid(orig, &p)
		if !w.received(k, b, &p) {
			if !bytes.Equal(b, orig) {
				t.Fatal("packet changed without a rewrite reported")
			}
			return
		}
		for i := range b {
			if i >= p.L4Off+4 && i < p.L4Off+8 || i >= p.L4Off+16 && i < p.L4Off+18 {
				continue
			}
			if b[i] != orig[i] {
				t.Fatalf("byte %d changed, beyond the sequence number and checksum", i)
			}
		}
		if got := binary.BigEndian.Uint32(b[p.L4Off+4:]); got != ack+30 {
			t.Fatalf("sequence number %d, want RCV.NXT %d", got, ack+30)
		}
		if tcpSumValid(b, &p) != valid {
			t.Fatalf("checksum valid %v before the rewrite, %v after", valid, !valid)
		}
	})
}

// tcpSumValid reports whether the TCP checksum of the parsed packet b
// verifies.
func tcpSumValid(b []byte, p *packet.Parsed) bool {
	seg := b[p.L4Off : p.L3Off+p.IPLen]
	src, dst := tcpip.AddrFromSlice(p.Src().AsSlice()), tcpip.AddrFromSlice(p.Dst().AsSlice())
	if p.IPVersion == 4 {
		s4, d4 := p.Src().Unmap().As4(), p.Dst().Unmap().As4()
		src, dst = tcpip.AddrFrom4(s4), tcpip.AddrFrom4(d4)
	}
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(seg)))
	return checksum.Checksum(seg, x) == 0xffff
}
