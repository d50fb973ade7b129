package vnet

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// TestCompletePartial: a packet whose checksum field holds the
// pseudo-header sum (as PrepareGSO leaves it, and CHECKSUM_PARTIAL) is
// completed to the checksum it had; a complete checksum, a UDP packet
// without one, and what does not parse are left alone.
func TestCompletePartial(t *testing.T) {
	var h Hdr
	hdrs := make([]byte, 120)
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"tcp4", superTCP(t, false, 3000, nil)},
		{"tcp6", superTCP(t, true, 1000, nil)},
		{"udp4", serialize(t, false, &layers.UDP{SrcPort: 1, DstPort: 2}, 500)},
		{"udp6", serialize(t, true, &layers.UDP{SrcPort: 1, DstPort: 2}, 7)},
	} {
		want := bytes.Clone(c.pkt)
		if CompletePartial(c.pkt, 0) || !bytes.Equal(c.pkt, want) {
			t.Errorf("%s: a complete checksum was changed", c.name)
		}
		n, err := PrepareGSO(c.pkt, 0, 1000, true, &h, hdrs)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		partial := append(bytes.Clone(hdrs[:n]), c.pkt[n:]...)
		if !CompletePartial(partial, 0) {
			t.Errorf("%s: partial checksum not recognised", c.name)
		}
		if !bytes.Equal(partial, want) {
			t.Errorf("%s: completed checksum %#04x, want %#04x", c.name,
				binary.BigEndian.Uint16(partial[h.CsumStart+h.CsumOffset:]), binary.BigEndian.Uint16(want[h.CsumStart+h.CsumOffset:]))
		}
	}
	udp := serialize(t, false, &layers.UDP{SrcPort: 1, DstPort: 2}, 10)
	udp[20+6], udp[20+7] = 0, 0 // no checksum
	if CompletePartial(udp, 0) {
		t.Error("UDP without a checksum completed")
	}
	if CompletePartial([]byte{0x45, 0, 0}, 0) || CompletePartial(nil, 0) || CompletePartial(udp, 100) {
		t.Error("a packet that does not parse was completed")
	}
}
