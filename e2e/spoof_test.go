package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// Payload tags: every crafted packet carries one, so the capture can tell
// which attempt a frame came from.
const (
	tagValid = "VALID "
	tagSpoof = "SPOOF "
)

// Ports of the spoofing test's flows (local side; the remote port is one
// more).
const (
	spoofUDP      = 7000 // app A: UDP 5-tuple
	spoofTCP      = 7100 // app A: TCP 5-tuple, the SYN flood's
	spoofListener = 7200 // app A: UDP listener on the user-space address
	victimUDP     = 7300 // app B: UDP 5-tuple
	unheldPort    = 7999 // no one's
)

// spoofPerKind is how many packets each spoof attempt sends; synFlood how
// many SYNs the flood sends (flow.SYNBurst of them may leave at once).
const (
	spoofPerKind = 5
	synFlood     = 200
)

// TestSpoofing: an app holding a raw nexus port crafts every spoof the
// flowswitch checks for, beside valid packets, while tshark captures on the
// peer side. No spoofed packet may reach the capture; the valid ones must
// (so the capture is shown to see what leaves). Each attempt must also be
// counted under its own drop reason.
func TestSpoofing(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) { testSpoofing(t, d) })
	}
}

// attempt is one kind of spoof: the packets app A sends for it, with the
// flow ID it stamps, and the drop counter that must account for them.
type attempt struct {
	kind    string
	id      [16]byte
	pkts    [][]byte
	counter func(*flowswitch.TxDrops) uint64
}

func testSpoofing(t *testing.T, d string) {
	w := newWorld(t, d)
	a := openRaw(t, w.nx, "spoofer")
	b := openRaw(t, w.nx, "victim")

	udp := func(src, dst netip.AddrPort, payload string) packettest.Frame {
		return packettest.Frame{Link: packet.RawIP, Src: src, Dst: dst, Proto: packet.ProtoUDP, Payload: []byte(payload)}
	}
	local := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(w.user4, port) }
	remote := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(w.peer4, port+1) }
	register := func(p *nexus.Port, k packet.Key, kind flow.Kind) [16]byte {
		id, err := p.Register(k, kind)
		if err != nil {
			t.Fatalf("register %v: %v", k, err)
		}
		return id.ID
	}
	idUDP := register(a, packet.MakeKey(packet.ProtoUDP, local(spoofUDP), remote(spoofUDP)), flow.Connected)
	idTCP := register(a, packet.MakeKey(packet.ProtoTCP, local(spoofTCP), remote(spoofTCP)), flow.Connected)
	idLst := register(a, packet.MakeKey(packet.ProtoUDP, local(spoofListener), netip.AddrPort{}), flow.Listener3)
	idVic := register(b, packet.MakeKey(packet.ProtoUDP, local(victimUDP), remote(victimUDP)), flow.Connected)

	// A spoofed address in the interface's subnet, and one in the IPv6
	// prefix: the closest lies.
	spoof4 := netip.AddrFrom4([4]byte{w.user4.As4()[0], w.user4.As4()[1], w.user4.As4()[2], 77})
	spoof6 := w.user6.As16()
	spoof6[15] = 0x77

	many := func(f packettest.Frame, edit func([]byte) []byte) [][]byte {
		var out [][]byte
		for i := range spoofPerKind {
			g := f
			g.Payload = append([]byte(nil), f.Payload...)
			g.Payload = fmt.Appendf(g.Payload, " #%d", i)
			p := g.Bytes()
			if edit != nil {
				p = edit(p)
			}
			out = append(out, p)
		}
		return out
	}
	withOpts := udp(local(spoofUDP), remote(spoofUDP), tagSpoof+"ipv4-options")
	withOpts.IPOptions = packettest.IPv4NOPs(4)
	tcpOnUDP := udp(local(spoofUDP), remote(spoofUDP), tagSpoof+"protocol")
	tcpOnUDP.Proto = packet.ProtoTCP
	var wrongID [16]byte
	copy(wrongID[:], "not-a-flow-id!!!")
	attempts := []attempt{
		{"spoofed source IPv4", idUDP, many(udp(netip.AddrPortFrom(spoof4, spoofUDP), remote(spoofUDP), tagSpoof+"src-ip"), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.SrcAddr }},
		{"spoofed source IPv6", idUDP, many(udp(netip.AddrPortFrom(netip.AddrFrom16(spoof6), spoofUDP), netip.AddrPortFrom(w.peer6, spoofUDP+1), tagSpoof+"src-ip6"), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.SrcAddr }},
		{"spoofed source port", idUDP, many(udp(local(unheldPort), remote(spoofUDP), tagSpoof+"src-port"), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.SrcPort }},
		{"protocol (TCP on a UDP flow's port)", idUDP, many(tcpOnUDP, nil),
			func(d *flowswitch.TxDrops) uint64 { return d.Proto }},
		{"another app's flow", idVic, many(udp(local(victimUDP), remote(victimUDP), tagSpoof+"owner"), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.NotOwner }},
		{"wrong flow ID", wrongID, many(udp(local(spoofUDP), remote(spoofUDP), tagSpoof+"flow-id"), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.FlowID }},
		{"IPv4 options", idUDP, many(withOpts, nil),
			func(d *flowswitch.TxDrops) uint64 { return d.IPv4Options }},
		{"length lie (IP length beyond the bytes sent)", idUDP, many(udp(local(spoofUDP), remote(spoofUDP), tagSpoof+"length"), func(p []byte) []byte {
			binary.BigEndian.PutUint16(p[2:4], uint16(len(p)+100))
			return p
		}), func(d *flowswitch.TxDrops) uint64 { return d.Length }},
		{"oversize (above the MTU)", idUDP, many(udp(local(spoofUDP), remote(spoofUDP), tagSpoof+"oversize"+strings.Repeat(".", 1600)), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.MTU }},
		{"not IP", idUDP, many(packettest.Frame{}, func([]byte) []byte { return []byte("\x00" + tagSpoof + "not-ip" + strings.Repeat(".", 40)) }),
			func(d *flowswitch.TxDrops) uint64 { return d.Parse }},
		{"data from a listener flow", idLst, many(udp(local(spoofListener), remote(spoofListener), tagSpoof+"listener"), nil),
			func(d *flowswitch.TxDrops) uint64 { return d.ListenerData }},
	}

	capt := startCapture(t, w.peer, w.capIf)
	before := txDrops(t, w.nx)
	start := time.Now()

	// Valid packets first and last: the capture must see both batches.
	valid := func(round int) {
		sendRaw(t, a, idUDP, many(udp(local(spoofUDP), remote(spoofUDP), fmt.Sprintf("%sA%d", tagValid, round)), nil)...)
		sendRaw(t, b, idVic, many(udp(local(victimUDP), remote(victimUDP), fmt.Sprintf("%sB%d", tagValid, round)), nil)...)
	}
	valid(0)
	sent := 2 * spoofPerKind
	for _, at := range attempts {
		sendRaw(t, a, at.id, at.pkts...)
		sent += len(at.pkts)
	}
	// The SYN flood: SYNs on A's own TCP flow, far beyond its budget.
	var syns [][]byte
	for i := range synFlood {
		f := packettest.Frame{Link: packet.RawIP, Src: local(spoofTCP), Dst: remote(spoofTCP), Proto: packet.ProtoTCP,
			Flags: packet.TCPSyn, Seq: uint32(i)}
		syns = append(syns, f.Bytes())
	}
	sendRaw(t, a, idTCP, syns...)
	sent += synFlood
	valid(1)
	sent += 2 * spoofPerKind
	waitTx(t, w.nx, sent)
	elapsed := time.Since(start)
	time.Sleep(300 * time.Millisecond) // what left is on the wire: let the capture write it
	pkts, err := capt.stop(t)
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}

	after := txDrops(t, w.nx)
	for _, at := range attempts {
		if got := at.counter(&after) - at.counter(&before); got < uint64(len(at.pkts)) {
			t.Errorf("%s: %d packets counted under its drop reason, want %d", at.kind, got, len(at.pkts))
		}
	}
	synDrops := after.SYNRate - before.SYNRate

	// What the capture saw.
	validSeen := map[string]int{}
	synSeen := 0
	for _, p := range pkts {
		data := p.Data()
		if i := bytes.Index(data, []byte(tagSpoof)); i >= 0 {
			end := min(len(data), i+40)
			t.Errorf("a spoofed packet left: %q in %v", data[i:end], p)
			continue
		}
		src, _ := ipSrc(p)
		if src == spoof4 || src == netip.AddrFrom16(spoof6) {
			t.Errorf("a packet with a spoofed source left: %v", p)
		}
		if tl, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && src == w.user4 {
			if uint16(tl.SrcPort) == spoofUDP {
				t.Errorf("TCP from the UDP flow's port left: %v", p)
			}
			if uint16(tl.SrcPort) == spoofTCP && tl.SYN {
				synSeen++
			}
		}
		if ul, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && bytes.HasPrefix(ul.Payload, []byte(tagValid)) {
			validSeen[strings.Fields(string(ul.Payload))[1]]++
		}
	}
	for _, k := range []string{"A0", "B0", "A1", "B1"} {
		if validSeen[k] != spoofPerKind {
			t.Errorf("valid batch %s: %d of %d packets captured", k, validSeen[k], spoofPerKind)
		}
	}
	// The SYN budget: flow.SYNBurst at once, flow.SYNRate per second
	// after; every SYN beyond it is dropped and counted.
	budget := flow.SYNBurst + int(elapsed.Seconds()*flow.SYNRate) + 1
	if synSeen == 0 || synSeen > budget {
		t.Errorf("SYN flood: %d SYNs captured, want 1..%d (budget over %v)", synSeen, budget, elapsed)
	}
	if int(synDrops)+synSeen != synFlood {
		t.Errorf("SYN flood: %d dropped for rate + %d captured != %d sent", synDrops, synSeen, synFlood)
	}
	t.Logf("%s: %d frames captured on %s; %d spoof kinds, each dropped under its reason, none captured; SYN flood: %d of %d left, %d dropped",
		d, len(pkts), w.capIf, len(attempts), synSeen, synFlood, synDrops)
}

// ipSrc returns a captured packet's IP source.
func ipSrc(p gopacket.Packet) (netip.Addr, bool) {
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		a, ok := netip.AddrFromSlice(ip.SrcIP)
		return a.Unmap(), ok
	case *layers.IPv6:
		return netip.AddrFromSlice(ip.SrcIP)
	}
	return netip.Addr{}, false
}

// openRaw opens a nexus port the test drives by hand: its app end is the
// raw channel an app holds.
func openRaw(t *testing.T, nx *nexus.Nexus, name string) *nexus.Port {
	t.Helper()
	p, err := nx.OpenPort(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// sendRaw puts pkts on p's TX ring, each stamped with flow ID id, as an app
// does (and as a misbehaving one may: nothing here is checked).
func sendRaw(t *testing.T, p *nexus.Port, id [16]byte, pkts ...[]byte) {
	t.Helper()
	app := p.App()
	bufs := make([]channel.Buf, 64)
	deadline := time.Now().Add(opTimeout)
	for len(pkts) > 0 {
		n, err := app.Alloc(bufs[:min(len(bufs), len(pkts))])
		if err != nil {
			t.Fatalf("alloc: %v", err)
		}
		if n == 0 {
			if time.Now().After(deadline) {
				t.Fatal("no TX buffer within the timeout")
			}
			p.Kick()
			p.Wait(func() bool { return false }, 10*time.Millisecond)
			continue
		}
		for i := range n {
			b := &bufs[i]
			b.Data = b.Data[:copy(b.Data[:cap(b.Data)], pkts[i])]
			m, err := app.Meta(b.Index)
			if err != nil {
				t.Fatal(err)
			}
			copy(m[channel.TxMetaFlowIDOff:], id[:])
		}
		for sent := 0; sent < n; {
			k, err := app.Send(bufs[sent:n])
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			sent += k
			p.Kick()
			if k == 0 {
				if time.Now().After(deadline) {
					t.Fatal("TX ring full for the whole timeout")
				}
				p.Wait(func() bool { return false }, 10*time.Millisecond)
			}
		}
		pkts = pkts[n:]
	}
}

func txDrops(t *testing.T, nx *nexus.Nexus) flowswitch.TxDrops {
	t.Helper()
	st, err := nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Switch.TxDrops
}

// waitTx waits until the switch has handled (sent or dropped) n packets
// from the apps' TX rings.
func waitTx(t *testing.T, nx *nexus.Nexus, n int) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		st, err := nx.Stats()
		if err != nil {
			t.Fatal(err)
		}
		d := st.Switch.TxDrops
		done := st.Switch.TxPackets + d.Length + d.MTU + d.Parse + d.IPv4Options + d.SrcAddr + d.SrcPort +
			d.Proto + d.NoFlow + d.NotOwner + d.FlowID + d.TornDown + d.ListenerData + d.SYNRate +
			st.Switch.L2.Held + st.Switch.L2.HoldDrops // waiting for the first resolution of the peer
		if done >= uint64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the switch handled %d of %d packets in %v", done, n, opTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
