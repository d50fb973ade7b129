// Package packettest builds test frames: Ethernet or raw IP, IPv4 (with
// options) or IPv6, carrying TCP (flags, sequence numbers, options), UDP,
// ICMP or ICMPv6 echo, with correct lengths and checksums. Tests, benchmarks
// and the demo share it instead of hand-building headers.
//
// A [Frame] describes one packet; [Frame.Append] writes it after the bytes
// of a caller's buffer and allocates nothing when the buffer has room, so a
// benchmark can rebuild frames in place:
//
//	f := packettest.Frame{Src: remote, Dst: local, Proto: packet.ProtoUDP, Size: 64}
//	buf = f.Append(buf[:0])
//
// Invariants, checked by the tests against gopacket: every frame Append
// writes parses with packet.Parse, its IPv4 header checksum and its TCP, UDP,
// ICMP or ICMPv6 checksum are correct, and its length is Len().
//
// The builder trusts its input: an address family that differs between Src
// and Dst, options whose length is not a multiple of 4, or a packet longer
// than 65535 bytes make a frame that is wrong, on purpose or not (tests of
// rejections start from such frames or edit a built one).
package packettest

import (
	"encoding/binary"
	"net/netip"

	"github.com/skylane/skylane/packet"
)

// Header lengths the builder writes.
const (
	EthLen  = 14 // Ethernet II, no VLAN tag
	IPv4Len = 20 // IPv4 without options
	IPv6Len = 40
	TCPLen  = 20 // TCP without options
	UDPLen  = 8
	ICMPLen = 8 // type, code, checksum, identifier, sequence number
)

// Default MACs: a frame from the remote side (SrcMAC) to the nexus (DstMAC),
// locally administered addresses.
var (
	RemoteMAC = [6]byte{0x02, 0, 0, 0, 0, 0x02}
	LocalMAC  = [6]byte{0x02, 0, 0, 0, 0, 0x01}
)

// Frame describes one frame. The zero values of most fields are the usual
// header values; Src, Dst and Proto are required.
type Frame struct {
	// Link is packet.Ethernet (the zero value means Ethernet too) or
	// packet.RawIP (an IP packet with no L2 header, as on a TUN device or in
	// a channel's buffers).
	Link packet.LinkType
	// SrcMAC and DstMAC are the Ethernet addresses; zero means RemoteMAC and
	// LocalMAC.
	SrcMAC, DstMAC [6]byte

	// Src and Dst are the IP addresses and the TCP or UDP ports. Both IPv4
	// (or IPv4-mapped) makes an IPv4 packet, else IPv6. For ICMP and ICMPv6
	// echo, Src's port is the echo identifier.
	Src, Dst netip.AddrPort
	// Proto is packet.ProtoTCP, ProtoUDP, ProtoICMP (IPv4) or ProtoICMPv6
	// (IPv6), each with its header; any other protocol number gets no L4
	// header, the payload follows the IP header.
	Proto uint8

	TOS       uint8  // IPv4 TOS or IPv6 traffic class
	TTL       uint8  // 0 means 64
	ID        uint16 // IPv4 identification
	NoDF      bool   // IPv4: clear the don't-fragment flag (set by default)
	FlowLabel uint32 // IPv6 flow label (20 bits)
	// IPOptions are IPv4 options, a multiple of 4 bytes (e.g. IPv4NOPs).
	IPOptions []byte

	Seq, Ack uint32
	Flags    packet.TCPFlags // TCP flags; zero means ACK
	Window   uint16          // TCP window; zero means 65535
	// TCPOptions are TCP options, a multiple of 4 bytes (e.g. TCPTimestamp).
	TCPOptions []byte

	ICMPType uint8  // zero means echo request (8 for ICMP, 128 for ICMPv6)
	ICMPSeq  uint16 // ICMP echo sequence number

	// Payload follows the L4 header.
	Payload []byte
	// Size, if larger than the frame, pads the payload with zeros to make
	// the whole frame (L2 header included) Size bytes long.
	Size int
}

// IPv4NOPs returns n bytes of IPv4 NOP options (n a multiple of 4 keeps the
// header valid), for Frame.IPOptions.
func IPv4NOPs(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 1
	}
	return b
}

// TCPTimestamp returns a 12-byte TCP option block: NOP, NOP and a timestamp
// option with values val and ecr, for Frame.TCPOptions.
func TCPTimestamp(val, ecr uint32) []byte {
	b := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:8], val)
	binary.BigEndian.PutUint32(b[8:12], ecr)
	return b
}

func (f *Frame) v4() bool { return f.Src.Addr().Unmap().Is4() && f.Dst.Addr().Unmap().Is4() }

func (f *Frame) l2Len() int {
	if f.Link == packet.RawIP {
		return 0
	}
	return EthLen
}

func (f *Frame) ipHdrLen() int {
	if f.v4() {
		return IPv4Len + len(f.IPOptions)
	}
	return IPv6Len
}

func (f *Frame) l4HdrLen() int {
	switch f.Proto {
	case packet.ProtoTCP:
		return TCPLen + len(f.TCPOptions)
	case packet.ProtoUDP:
		return UDPLen
	case packet.ProtoICMP, packet.ProtoICMPv6:
		return ICMPLen
	}
	return 0
}

// HeaderLen returns the bytes in front of the payload: L2, IP and L4 headers.
func (f *Frame) HeaderLen() int { return f.l2Len() + f.ipHdrLen() + f.l4HdrLen() }

// Len returns the length of the frame Append writes.
func (f *Frame) Len() int { return max(f.HeaderLen()+len(f.Payload), f.Size) }

// Bytes returns the frame in a new slice.
func (f *Frame) Bytes() []byte { return f.Append(make([]byte, 0, f.Len())) }

// Append appends the frame to dst and returns the extended slice. It does
// not allocate when cap(dst)-len(dst) >= Len().
func (f *Frame) Append(dst []byte) []byte {
	n := f.Len()
	start := len(dst)
	if cap(dst)-start < n {
		grown := make([]byte, start, start+n)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:start+n]
	b := dst[start:]
	clear(b)

	off := 0
	if l2 := f.l2Len(); l2 > 0 {
		src, dstMAC := f.SrcMAC, f.DstMAC
		if src == [6]byte{} {
			src = RemoteMAC
		}
		if dstMAC == [6]byte{} {
			dstMAC = LocalMAC
		}
		copy(b[0:6], dstMAC[:])
		copy(b[6:12], src[:])
		et := packet.EtherTypeIPv6
		if f.v4() {
			et = packet.EtherTypeIPv4
		}
		binary.BigEndian.PutUint16(b[12:14], et)
		off = l2
	}
	ip := b[off:]
	ipHdr := f.ipHdrLen()
	l4 := ip[ipHdr:]
	l4Len := len(l4) // L4 header, payload and padding
	copy(l4[f.l4HdrLen():], f.Payload)
	ttl := f.TTL
	if ttl == 0 {
		ttl = 64
	}

	var pseudo uint32 // unfolded sum of the pseudo header, without the length and protocol
	if f.v4() {
		ip[0] = 0x40 | byte(ipHdr/4)
		ip[1] = f.TOS
		binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
		binary.BigEndian.PutUint16(ip[4:6], f.ID)
		if !f.NoDF {
			ip[6] = 0x40
		}
		ip[8] = ttl
		ip[9] = f.Proto
		s, d := f.Src.Addr().Unmap().As4(), f.Dst.Addr().Unmap().As4()
		copy(ip[12:16], s[:])
		copy(ip[16:20], d[:])
		copy(ip[20:ipHdr], f.IPOptions)
		binary.BigEndian.PutUint16(ip[10:12], ^packet.Fold(packet.Sum(ip[:ipHdr], 0)))
		pseudo = packet.Sum(ip[12:20], 0)
	} else {
		binary.BigEndian.PutUint32(ip[0:4], 6<<28|uint32(f.TOS)<<20|f.FlowLabel&0xfffff)
		binary.BigEndian.PutUint16(ip[4:6], uint16(len(ip)-IPv6Len))
		ip[6] = f.Proto
		ip[7] = ttl
		s, d := f.Src.Addr().As16(), f.Dst.Addr().As16()
		copy(ip[8:24], s[:])
		copy(ip[24:40], d[:])
		pseudo = packet.Sum(ip[8:40], 0)
	}

	var csum int // offset of the L4 checksum in l4
	switch f.Proto {
	case packet.ProtoTCP:
		binary.BigEndian.PutUint16(l4[0:2], f.Src.Port())
		binary.BigEndian.PutUint16(l4[2:4], f.Dst.Port())
		binary.BigEndian.PutUint32(l4[4:8], f.Seq)
		binary.BigEndian.PutUint32(l4[8:12], f.Ack)
		l4[12] = byte(f.l4HdrLen()/4) << 4
		fl := f.Flags
		if fl == 0 {
			fl = packet.TCPAck
		}
		l4[13] = byte(fl)
		w := f.Window
		if w == 0 {
			w = 65535
		}
		binary.BigEndian.PutUint16(l4[14:16], w)
		copy(l4[TCPLen:], f.TCPOptions)
		csum = 16
	case packet.ProtoUDP:
		binary.BigEndian.PutUint16(l4[0:2], f.Src.Port())
		binary.BigEndian.PutUint16(l4[2:4], f.Dst.Port())
		binary.BigEndian.PutUint16(l4[4:6], uint16(l4Len))
		csum = 6
	case packet.ProtoICMP, packet.ProtoICMPv6:
		t := f.ICMPType
		if t == 0 {
			t = 8 // echo request
			if f.Proto == packet.ProtoICMPv6 {
				t = 128
			}
		}
		l4[0] = t
		binary.BigEndian.PutUint16(l4[4:6], f.Src.Port())
		binary.BigEndian.PutUint16(l4[6:8], f.ICMPSeq)
		csum = 2
	default:
		return dst // no L4 header, no checksum
	}
	acc := packet.Sum(l4, 0)
	if f.Proto != packet.ProtoICMP { // ICMP (v4) has no pseudo header
		acc += pseudo + uint32(f.Proto) + uint32(l4Len)
	}
	c := ^packet.Fold(acc)
	if c == 0 && f.Proto == packet.ProtoUDP {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(l4[csum:csum+2], c)
	return dst
}
