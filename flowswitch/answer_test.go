package flowswitch_test

import (
	"net/netip"
	"testing"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// answerSumsOK reports whether the IPv4 header checksum (if any) and the
// L4 checksum of frame f are right.
func answerSumsOK(t *testing.T, f []byte, p *packet.Parsed) bool {
	t.Helper()
	ip := f[p.L3Off : p.L3Off+p.IPLen]
	if p.IPVersion == 4 && packet.Fold(packet.Sum(ip[:p.IPHdrLen], 0)) != 0xffff {
		return false
	}
	l4 := ip[p.IPHdrLen:]
	var sum uint32
	if p.Proto != packet.ProtoICMP {
		a := ip[12:20]
		if p.IPVersion == 6 {
			a = ip[8:40]
		}
		sum = packet.Sum(a, uint32(p.Proto)+uint32(len(l4)))
	}
	return packet.Fold(packet.Sum(l4, sum)) == 0xffff
}

// TestAnswerAsHost: with AnswerAsHost, packets of no flow to the switch's
// addresses are answered as a host would (echo reply, RST, port
// unreachable), each with right checksums and back to the sender's MAC;
// ICMP errors, packets to other addresses and RSTs are not.
func TestAnswerAsHost(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		local, remote, icmp := localIP, remoteIP, packet.ProtoICMP
		if v6 {
			local, remote, icmp = localIP6, remoteIP6, packet.ProtoICMPv6
		}
		t.Run(map[bool]string{false: "v4", true: "v6"}[v6], func(t *testing.T) {
			r := newRig(t, flowswitch.Options{AnswerAsHost: true})
			frame := func(f packettest.Frame) []byte {
				if f.Src == (netip.AddrPort{}) {
					f.Src = netip.AddrPortFrom(remote, 40000)
				}
				return f.Bytes()
			}
			echo := frame(packettest.Frame{Dst: netip.AddrPortFrom(local, 0), Proto: icmp, Payload: []byte("ping")})
			syn := frame(packettest.Frame{Dst: netip.AddrPortFrom(local, 80), Proto: packet.ProtoTCP, Flags: packet.TCPSyn, Seq: 1000})
			ack := frame(packettest.Frame{Dst: netip.AddrPortFrom(local, 80), Proto: packet.ProtoTCP, Flags: packet.TCPAck, Seq: 5, Ack: 7777})
			rst := frame(packettest.Frame{Dst: netip.AddrPortFrom(local, 80), Proto: packet.ProtoTCP, Flags: packet.TCPRst})
			udp := frame(packettest.Frame{Dst: netip.AddrPortFrom(local, 53), Proto: packet.ProtoUDP, Size: 700})
			other := frame(packettest.Frame{Dst: netip.AddrPortFrom(remote, 80), Proto: packet.ProtoTCP, Flags: packet.TCPSyn})
			r.write(t, echo, syn, ack, rst, udp, other)
			r.rxOnce(t, 6)
			wire := r.wire(t)
			if len(wire) != 4 {
				t.Fatalf("%d answers, want 4 (echo, two resets, unreachable)", len(wire))
			}
			ps := make([]packet.Parsed, len(wire))
			for i, w := range wire {
				p := &ps[i]
				if err := packet.Parse(w, packet.Ethernet, p); err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				if p.Src() != local || p.Dst() != remote || [6]byte(w[0:6]) != packettest.RemoteMAC || !answerSumsOK(t, w, p) {
					t.Fatalf("answer %d: %v -> %v, MAC %x, checksums ok %v", i, p.Src(), p.Dst(), w[0:6], answerSumsOK(t, w, p))
				}
			}
			echoType, unreachType, unreachCode := uint8(0), uint8(3), uint8(3)
			if v6 {
				echoType, unreachType, unreachCode = 129, 1, 4
			}
			if p := ps[0]; p.Proto != icmp || p.ICMPType != echoType || string(wire[0][p.PayloadOff:p.PayloadOff+4]) != "ping" {
				t.Errorf("echo reply: type %d, payload %q", p.ICMPType, wire[0][p.PayloadOff:])
			}
			if p := ps[1]; p.Flags != packet.TCPRst|packet.TCPAck || p.Ack != 1001 || p.SrcPort != 80 || p.DstPort != 40000 {
				t.Errorf("reset of a SYN: flags %v ack %d ports %d->%d", p.Flags, p.Ack, p.SrcPort, p.DstPort)
			}
			if p := ps[2]; p.Flags != packet.TCPRst || p.Seq != 7777 {
				t.Errorf("reset of an ACK: flags %v seq %d", p.Flags, p.Seq)
			}
			p := ps[3]
			if p.ICMPType != unreachType || p.ICMPCode != unreachCode {
				t.Errorf("unreachable: type %d code %d", p.ICMPType, p.ICMPCode)
			}
			limit := 576
			if v6 {
				limit = 1280
			}
			if p.IPLen > limit || p.IPLen < 500 {
				t.Errorf("unreachable of %d bytes: want the quote of the 700-byte frame, within %d", p.IPLen, limit)
			}
			// An ICMP error to us is never answered.
			icmpErr := frame(packettest.Frame{Dst: netip.AddrPortFrom(local, 0), Proto: icmp, Payload: []byte("quote")})
			icmpErr[ps[0].L3Off+ps[0].IPHdrLen] = unreachType
			r.write(t, icmpErr)
			r.rxOnce(t, 1)
			if got := r.wire(t); len(got) != 0 {
				t.Errorf("answered an ICMP error: %d frames", len(got))
			}
			if st := r.sw.Stats().Answers; st.EchoReplies != 1 || st.Resets != 2 || st.Unreachable != 1 {
				t.Errorf("answers %+v", st)
			}
		})
	}
}
