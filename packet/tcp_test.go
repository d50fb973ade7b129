package packet

import (
	"bytes"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

func TestTCPFlagsString(t *testing.T) {
	for f, want := range map[TCPFlags]string{
		0:                     "0",
		TCPSyn | TCPAck:       "SYN|ACK",
		TCPFin | TCPPsh:       "FIN|PSH",
		TCPEce | TCPCwr:       "ECE|CWR",
		TCPRst | TCPUrg:       "RST|URG",
		TCPFlags(0xff):        "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR",
		TCPAck | TCPPsh | 0x0: "PSH|ACK",
	} {
		if got := f.String(); got != want {
			t.Errorf("TCPFlags(%#x).String() = %q, want %q", uint8(f), got, want)
		}
	}
	if !(TCPSyn | TCPAck).Has(TCPAck) || TCPAck.Has(TCPSyn|TCPAck) {
		t.Error("Has")
	}
}

// segment parses an IPv4 TCP segment of one flow with n bytes of payload,
// starting at seq, after edit has changed its headers.
func segment(t *testing.T, seq uint32, n int, edit func(*layers.IPv4, *layers.TCP)) (*Parsed, []byte) {
	t.Helper()
	ip, tc := ip4(layers.IPProtocolTCP), tcp(TCPAck)
	tc.Seq = seq
	tc.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}
	if edit != nil {
		edit(ip, tc)
	}
	b := serialize(t, eth(layers.EthernetTypeIPv4), ip, tc, payload(n))
	var p Parsed
	if err := Parse(b, Ethernet, &p); err != nil {
		t.Fatal(err)
	}
	return &p, b
}

// TestCanAppend follows docs/design.md §5.4: in-order data segments of one flow
// merge; any flag but ACK/PSH, zero payload, a sequence gap or a changed IP
// header ends the merge.
func TestCanAppend(t *testing.T) {
	first, _ := segment(t, 1000, 100, nil)
	for _, c := range []struct {
		name string
		seq  uint32
		n    int
		edit func(*layers.IPv4, *layers.TCP)
		want bool
	}{
		{"next in order", 1100, 100, nil, true},
		{"with PSH", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.PSH = true }, true},
		{"new window", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.Window = 100 }, true},
		{"new IP ID", 1100, 100, func(ip *layers.IPv4, _ *layers.TCP) { ip.Id++ }, true},
		{"gap", 1101, 100, nil, false},
		{"overlap", 1099, 100, nil, false},
		{"no payload", 1100, 0, nil, false},
		{"FIN", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.FIN = true }, false},
		{"RST", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.RST = true }, false},
		{"URG", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.URG = true }, false},
		{"CWR", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.CWR = true }, false},
		{"no ACK", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.ACK = false }, false},
		{"new ack number", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.Ack++ }, false},
		{"other options", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.Options = nil }, false},
		{"other port", 1100, 100, func(_ *layers.IPv4, t *layers.TCP) { t.SrcPort++ }, false},
		{"ECN CE mark", 1100, 100, func(ip *layers.IPv4, _ *layers.TCP) { ip.TOS = 3 }, false},
		{"TTL", 1100, 100, func(ip *layers.IPv4, _ *layers.TCP) { ip.TTL = 63 }, false},
		{"DF cleared", 1100, 100, func(ip *layers.IPv4, _ *layers.TCP) { ip.Flags = 0 }, false},
		{"IP options", 1100, 100, func(ip *layers.IPv4, _ *layers.TCP) {
			ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		}, false},
		{"first fragment", 1100, 100, func(ip *layers.IPv4, _ *layers.TCP) { ip.Flags = layers.IPv4MoreFragments }, false},
	} {
		next, _ := segment(t, c.seq, c.n, c.edit)
		if got := first.CanAppend(next); got != c.want {
			t.Errorf("%s: CanAppend = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestSeqEndAndOptions(t *testing.T) {
	p, b := segment(t, 1000, 100, nil)
	if p.SeqEnd() != 1100 || !p.TCPMergeable() {
		t.Errorf("SeqEnd = %d, mergeable %v", p.SeqEnd(), p.TCPMergeable())
	}
	// Kind 8, length 10, 8 zero bytes, padded with two NOPs by gopacket (or
	// an end-of-options byte): 12 bytes of options.
	opts := p.TCPOptions(b)
	if len(opts) != 12 || opts[0] != 8 || opts[1] != 10 {
		t.Errorf("TCPOptions = %x", opts)
	}
	if q, qb := segment(t, 1100, 100, nil); !bytes.Equal(q.TCPOptions(qb), opts) {
		t.Error("equal options compare unequal")
	}
	if p.TCPOptions(b[:10]) != nil {
		t.Error("TCPOptions of a shorter buffer")
	}
	syn, _ := segment(t, 5000, 0, func(_ *layers.IPv4, t *layers.TCP) { t.SYN, t.ACK = true, false })
	fin, _ := segment(t, 5000, 10, func(_ *layers.IPv4, t *layers.TCP) { t.FIN = true })
	if syn.SeqEnd() != 5001 || fin.SeqEnd() != 5011 || syn.TCPMergeable() || fin.TCPMergeable() {
		t.Errorf("SYN/FIN SeqEnd %d %d", syn.SeqEnd(), fin.SeqEnd())
	}
	udp := parseCase(t, "ipv6_udp")
	if udp.TCPMergeable() || udp.TCPOptions(udp6Packet(t)) != nil || udp.SameIPHeader(udp) != true {
		t.Error("UDP: mergeable, or has TCP options, or differs from itself")
	}
}
