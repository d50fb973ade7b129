package packettest

import (
	"encoding/binary"

	"github.com/skylane/skylane/packet"
)

// Fragment cuts frame b (link type lt; IPv4 without options or IPv6
// without extension headers, as Frame builds them) into fragments
// carrying at most size bytes of data each (rounded down to a multiple
// of 8), as a host's IP layer would: IPv4 fragments with MF and offsets
// (DF cleared), IPv6 fragments with a fragment header of identification
// id (IPv4 keeps its own identification). The IPv4 header checksums are
// recomputed. It returns nil for a frame it cannot cut.
func Fragment(b []byte, lt packet.LinkType, size int, id uint32) [][]byte {
	var p packet.Parsed
	if packet.Parse(b, lt, &p) != nil || p.IsFragment() || p.IPOptions || p.ExtHeaders != 0 {
		return nil
	}
	size &^= 7
	if size <= 0 {
		return nil
	}
	l2, ip := b[:p.L3Off], b[p.L3Off:p.L3Off+p.IPLen]
	hl := p.IPHdrLen
	data := ip[hl:]
	var out [][]byte
	for off := 0; off < len(data); off += size {
		n := min(size, len(data)-off)
		more := off+n < len(data)
		f := append([]byte{}, l2...)
		if p.IPVersion == 4 {
			h := append([]byte{}, ip[:hl]...)
			binary.BigEndian.PutUint16(h[2:4], uint16(hl+n))
			fo := uint16(off >> 3)
			if more {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(h[6:8], fo)
			h[10], h[11] = 0, 0
			binary.BigEndian.PutUint16(h[10:12], ^packet.Fold(packet.Sum(h, 0)))
			f = append(f, h...)
		} else {
			h := append([]byte{}, ip[:hl]...)
			binary.BigEndian.PutUint16(h[4:6], uint16(8+n))
			nh := h[6]
			h[6] = 44
			fo := uint16(off)
			if more {
				fo |= 1
			}
			var fh [8]byte
			fh[0] = nh
			binary.BigEndian.PutUint16(fh[2:4], fo)
			binary.BigEndian.PutUint32(fh[4:8], id)
			f = append(append(f, h...), fh[:]...)
		}
		out = append(out, append(f, data[off:off+n]...))
	}
	return out
}
