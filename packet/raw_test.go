package packet

import "encoding/binary"

// Hand-built headers, for what gopacket cannot serialize (AH, malformed
// packets) or where the exact bytes are the point of the test.

// ethBytes returns an Ethernet header from remoteMAC to localMAC.
func ethBytes(et uint16) []byte {
	b := make([]byte, 14)
	copy(b[0:6], localMAC)
	copy(b[6:12], remoteMAC)
	binary.BigEndian.PutUint16(b[12:14], et)
	return b
}

// ip6Frame returns an Ethernet frame holding an IPv6 header from remote6 to
// local6 with next header nh, hop limit 64, followed by rest; the payload
// length covers rest.
func ip6Frame(nh uint8, rest ...[]byte) []byte {
	b := ethBytes(EtherTypeIPv6)
	h := make([]byte, 40)
	h[0] = 0x60
	h[6] = nh
	h[7] = 64
	copy(h[8:24], remote6)
	copy(h[24:40], local6)
	n := 0
	for _, r := range rest {
		n += len(r)
	}
	binary.BigEndian.PutUint16(h[4:6], uint16(n))
	b = append(b, h...)
	for _, r := range rest {
		b = append(b, r...)
	}
	return b
}

// optsHdr returns an n-byte hop-by-hop or destination options header (n a
// multiple of 8) whose options are one PadN.
func optsHdr(next uint8, n int) []byte {
	b := make([]byte, n)
	b[0] = next
	b[1] = uint8(n/8 - 1)
	b[2] = 1 // PadN
	b[3] = uint8(n - 4)
	return b
}

// routingHdr returns an 8-byte segment routing header (type 4) with no
// segments left.
func routingHdr(next uint8) []byte { return []byte{next, 0, 4, 0, 0, 0, 0, 0} }

// fragHdr returns an IPv6 fragment header; off is in bytes, a multiple of 8.
func fragHdr(next uint8, off uint16, more bool, id uint32) []byte {
	b := make([]byte, 8)
	b[0] = next
	v := off
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:4], v)
	binary.BigEndian.PutUint32(b[4:8], id)
	return b
}

// ahHdr returns an n-byte AH header (n a multiple of 4, at least 12).
func ahHdr(next uint8, n int) []byte {
	b := make([]byte, n)
	b[0] = next
	b[1] = uint8(n/4 - 2)
	binary.BigEndian.PutUint32(b[4:8], 0x100) // SPI
	binary.BigEndian.PutUint32(b[8:12], 1)    // sequence number
	return b
}

// tcpBytes returns a TCP header 40000 -> 80 of hl bytes (options are NOPs)
// followed by n bytes of payload. The checksum is left zero.
func tcpBytes(flags TCPFlags, hl, n int) []byte {
	b := make([]byte, hl+n)
	binary.BigEndian.PutUint16(b[0:2], 40000)
	binary.BigEndian.PutUint16(b[2:4], 80)
	binary.BigEndian.PutUint32(b[4:8], 1000)
	binary.BigEndian.PutUint32(b[8:12], 2000)
	b[12] = uint8(hl/4) << 4
	b[13] = uint8(flags)
	binary.BigEndian.PutUint16(b[14:16], 65535)
	for i := 20; i < hl; i++ {
		b[i] = 1 // NOP
	}
	return b
}

// udpBytes returns a UDP header 40000 -> 53 whose length field says ulen,
// followed by n bytes of payload. The checksum is left zero.
func udpBytes(ulen, n int) []byte {
	b := make([]byte, 8+n)
	binary.BigEndian.PutUint16(b[0:2], 40000)
	binary.BigEndian.PutUint16(b[2:4], 53)
	binary.BigEndian.PutUint16(b[4:6], uint16(ulen))
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// mut returns a copy of b changed by f.
func mut(b []byte, f func(b []byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	return c
}
