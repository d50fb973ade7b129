package flowswitch_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
)

var (
	macA = [6]byte{0x02, 0, 0, 0, 0, 0x0a}
	macB = [6]byte{0x02, 0, 0, 0, 0, 0x0b}
)

// wireLog records the frames a link writes: a copy of each.
type wireLog struct {
	mu     sync.Mutex
	off    bool // record nothing (allocation counts)
	frames [][]byte
}

func (w *wireLog) hook(frames [][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.off {
		return
	}
	for _, f := range frames {
		w.frames = append(w.frames, bytes.Clone(f))
	}
}

func (w *wireLog) take() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	f := w.frames
	w.frames = nil
	return f
}

// l2Node is one side of a two-switch wire: a switch with its own MAC and
// addresses, no static DstMAC, and one app port.
type l2Node struct {
	*rig
	log  *wireLog
	mac  [6]byte
	v4   netip.Addr
	v6   netip.Addr
	flow *flow.Entry
}

// newL2Pair returns two switches on the two ends of one memif wire: A owns
// localIP and localIP6 with macA, B remoteIP and remoteIP6 with macB. Each
// resolves the other's MAC itself (Options.SrcMAC set, DstMAC zero).
func newL2Pair(t testing.TB, now func() int64) (a, b *l2Node) {
	t.Helper()
	ea, eb, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ea.Close() })
	mk := func(l netif.Link, mac [6]byte, v4, v6 netip.Addr) *l2Node {
		n := &l2Node{log: &wireLog{}, mac: mac, v4: v4, v6: v6}
		sw, err := flowswitch.New(flowswitch.Options{Link: &hookLink{Link: l, hook: n.log.hook},
			LocalAddrs: []netip.Addr{v4, v6}, SrcMAC: mac, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if sw.Neighbors() == nil {
			t.Fatal("no built-in resolver with SrcMAC set and DstMAC zero")
		}
		ch, app := newChannel(t, channel.Options{Name: "l2"})
		n.rig = &rig{sw: sw, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{sw.AddPort(ch)}}
		return n
	}
	return mk(ea, macA, localIP, localIP6), mk(eb, macB, remoteIP, remoteIP6)
}

// connect registers the UDP flow a:5000 ↔ b:6000 on both sides, over IPv4
// or IPv6.
func connect(t testing.TB, a, b *l2Node, v6 bool) {
	t.Helper()
	aip, bip := a.v4, b.v4
	if v6 {
		aip, bip = a.v6, b.v6
	}
	ka := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(aip, 5000), netip.AddrPortFrom(bip, 6000))
	kb := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(bip, 6000), netip.AddrPortFrom(aip, 5000))
	var err error
	if a.flow, err = a.sw.Register(a.ports[0], ka, flow.Connected); err != nil {
		t.Fatal(err)
	}
	if b.flow, err = b.sw.Register(b.ports[0], kb, flow.Connected); err != nil {
		t.Fatal(err)
	}
}

// packetTo builds the UDP packet n sends on its flow, with payload tag.
func (n *l2Node) packetTo(t testing.TB, tag string) []byte {
	t.Helper()
	k := n.flow.Key()
	l, r := k.LocalAddrPort(), k.RemoteAddrPort()
	p := txPkt{proto: packet.ProtoUDP, src: l.Addr(), dst: r.Addr(), sport: l.Port(), dport: r.Port()}
	if l.Addr().Is6() {
		return udp6Packet(t, l, r, tag)
	}
	p.size = 28 + len(tag)
	b := p.build(t)
	copy(b[28:], tag)
	return b
}

// udp6Packet is an IPv6/UDP packet from l to r carrying tag (the UDP
// checksum is left 0: nobody on this path checks it).
func udp6Packet(t testing.TB, l, r netip.AddrPort, tag string) []byte {
	t.Helper()
	b := make([]byte, 48+len(tag))
	b[0] = 6 << 4
	binary.BigEndian.PutUint16(b[4:6], uint16(8+len(tag)))
	b[6], b[7] = packet.ProtoUDP, 64
	s16, d16 := l.Addr().As16(), r.Addr().As16()
	copy(b[8:24], s16[:])
	copy(b[24:40], d16[:])
	binary.BigEndian.PutUint16(b[40:42], l.Port())
	binary.BigEndian.PutUint16(b[42:44], r.Port())
	binary.BigEndian.PutUint16(b[44:46], uint16(8+len(tag)))
	copy(b[48:], tag)
	return b
}

// tags receives what n's app has and returns the payloads (UDP over IPv4
// or IPv6).
func (n *l2Node) tags(t testing.TB) []string {
	t.Helper()
	var out []string
	bufs := make([]channel.Buf, 64)
	for {
		k, err := n.apps[0].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			return out
		}
		for _, b := range bufs[:k] {
			var p packet.Parsed
			if err := packet.Parse(b.Data, packet.RawIP, &p); err != nil {
				t.Fatalf("app got a bad packet: %v", err)
			}
			out = append(out, string(b.Data[p.PayloadOff:p.PayloadOff+p.PayloadLen]))
		}
		n.apps[0].Free(bufs[:k])
		n.chans[0].Sync()
	}
}

// pump runs both switches' datapaths a few rounds: whatever is in flight
// on the wire, in either direction, is delivered.
func pump(t testing.TB, nodes ...*l2Node) {
	t.Helper()
	for range 4 {
		for _, n := range nodes {
			if _, err := n.sw.RxOnce(); err != nil {
				t.Fatal(err)
			}
			if _, err := n.sw.TxSync(); err != nil {
				t.Fatal(err)
			}
			if _, err := n.sw.Service(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// ipFrames returns the IPv4/IPv6 frames of a log (not ARP, not NDP).
func ipFrames(frames [][]byte) [][]byte {
	var out [][]byte
	for _, f := range frames {
		var p packet.Parsed
		if packet.Parse(f, packet.Ethernet, &p) == nil && p.IPVersion != 0 && p.Proto != packet.ProtoICMPv6 {
			out = append(out, f)
		}
	}
	return out
}

// Two switches with no static next hop resolve each other (ARP for IPv4,
// NDP for IPv6) and exchange a flow's packets: the first packets wait in
// the resolver while A solicits, leave in order once B answers, and every
// IP frame on the wire carries the peer's MAC. B learns A from A's
// request, so its answer needs no solicitation of its own.
func TestL2ResolveEachOther(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "ipv4"
		if v6 {
			name = "ipv6"
		}
		t.Run(name, func(t *testing.T) {
			a, b := newL2Pair(t, nil)
			connect(t, a, b, v6)
			a.send(t, 0, a.flow.ID(), a.packetTo(t, "one"), a.packetTo(t, "two"))
			if _, err := a.sw.TxOnce(a.ports[0]); err != nil {
				t.Fatal(err)
			}
			st := a.sw.Stats().L2
			if st.Held != 2 || st.PollFrames != 1 {
				t.Fatalf("A after sending to an unknown peer: %+v", st)
			}
			sol := a.log.take()
			if len(sol) != 1 || len(ipFrames(sol)) != 0 {
				t.Fatalf("A wrote %d frames, want one solicitation", len(sol))
			}
			pump(t, b, a, b)
			if got := b.tags(t); !equal(got, []string{"one", "two"}) {
				t.Fatalf("B's app got %q", got)
			}
			b.send(t, 0, b.flow.ID(), b.packetTo(t, "three"))
			pump(t, b, a)
			if got := a.tags(t); !equal(got, []string{"three"}) {
				t.Fatalf("A's app got %q", got)
			}
			for _, n := range []struct {
				node *l2Node
				peer [6]byte
				want int
			}{{a, macB, 2}, {b, macA, 1}} {
				ip := ipFrames(n.node.log.take())
				if len(ip) != n.want {
					t.Errorf("%d IP frames on the wire, want %d", len(ip), n.want)
				}
				for _, f := range ip {
					if [6]byte(f[0:6]) != n.peer || [6]byte(f[6:12]) != n.node.mac {
						t.Errorf("frame %x → %x, want %x → %x", f[6:12], f[0:6], n.node.mac, n.peer)
					}
				}
			}
			if st := b.sw.Stats().L2; st.Held != 0 || st.Replies != 1 || st.Frames != 1 {
				t.Errorf("B: %+v", st)
			}
			if st := a.sw.Stats().L2; st.Frames != 1 || st.Replies != 0 || st.HoldDrops != 0 {
				t.Errorf("A: %+v", st)
			}
			if rs := a.sw.Neighbors().Stats(); rs.Resolved != 1 || rs.PendingSent != 2 {
				t.Errorf("A's resolver: %+v", rs)
			}
			snap := a.sw.Snapshot()
			if snap.L2 == nil || snap.L2.Resolver.Resolved != 1 || snap.L2.Switch.Held != 2 {
				t.Errorf("snapshot L2 %+v", snap.L2)
			}
			var tbl bytes.Buffer
			if err := snap.WriteTable(&tbl, -1); err != nil || !bytes.Contains(tbl.Bytes(), []byte("arp/ndp in")) {
				t.Errorf("table (%v):\n%s", err, tbl.String())
			}
		})
	}
}

// Two switches that resolved each other exchange batches without
// allocating, over IPv4 and IPv6.
func TestL2NoAllocs(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		a, b := newL2Pair(t, nil)
		connect(t, a, b, v6)
		a.send(t, 0, a.flow.ID(), a.packetTo(t, "hello"))
		a.sw.TxOnce(a.ports[0])
		pump(t, b, a, b)
		if got := b.tags(t); len(got) != 1 {
			t.Fatalf("v6 %v: B got %q", v6, got)
		}
		a.log.take()
		pkt := a.packetTo(t, "steady")
		id := a.flow.ID()
		app, ch := a.apps[0], a.chans[0]
		bufs := make([]channel.Buf, 32)
		rb := make([]channel.Buf, 64)
		step := func() {
			for got := 0; got < len(bufs); {
				ch.Sync()
				n, err := app.Alloc(bufs[got:])
				if n == 0 || err != nil {
					t.Fatalf("alloc %d, %v", n, err)
				}
				got += n
			}
			for i, x := range bufs {
				bufs[i].Data = x.Data[:copy(x.Data, pkt)]
				copy(ch.Pool().UserMeta(x.Index), id[:])
			}
			app.Send(bufs)
			if n, err := a.sw.TxOnce(a.ports[0]); n != 32 || err != nil {
				t.Fatalf("TxOnce = %d, %v", n, err)
			}
			got := 0
			for got < 32 {
				if n, err := b.sw.RxOnce(); n == 0 || err != nil {
					t.Fatalf("RxOnce = %d, %v after %d", n, err, got)
				}
				n, _ := b.apps[0].Receive(rb)
				b.apps[0].Free(rb[:n])
				b.chans[0].Sync()
				got += n
			}
		}
		a.log.mu.Lock()
		a.log.off = true // the log copies every frame: not for the count
		a.log.mu.Unlock()
		for range 5 {
			step()
		}
		if n := testing.AllocsPerRun(50, step); n != 0 {
			t.Errorf("v6 %v: %v allocations per batch of 32", v6, n)
		}
		if st := a.sw.Stats().L2; st.Held != 1 {
			t.Errorf("v6 %v: %+v", v6, st)
		}
	}
}

// A next hop that never answers: packets wait in the resolver, at most
// PendingPerAddr of them (the rest are counted drops), solicitations are
// retried on Service's schedule, and after MaxProbes unanswered the held
// packets are dropped and counted. Time is synthetic.
func TestL2Unresolved(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	a, b := newL2Pair(t, now)
	connect(t, a, b, false)
	var pkts [][]byte
	for range 12 {
		pkts = append(pkts, a.packetTo(t, "lost"))
	}
	a.send(t, 0, a.flow.ID(), pkts...)
	if _, err := a.sw.TxOnce(a.ports[0]); err != nil {
		t.Fatal(err)
	}
	st := a.sw.Stats().L2
	if st.Held != neigh.DefaultPendingPerAddr || st.HoldDrops != 12-neigh.DefaultPendingPerAddr {
		t.Fatalf("%+v", st)
	}
	// B never reads: A's solicitations go unanswered.
	for range 40 {
		clock += int64(neigh.PollInterval)
		wait, err := a.sw.Service()
		if err != nil {
			t.Fatal(err)
		}
		if wait > neigh.PollInterval {
			t.Fatalf("Service says wait %v, more than the poll interval", wait)
		}
	}
	rs := a.sw.Neighbors().Stats()
	if rs.SolicitsSent != neigh.DefaultMaxProbes || rs.Failed != 1 || rs.PendingExpired != neigh.DefaultPendingPerAddr {
		t.Errorf("resolver %+v", rs)
	}
	if len(ipFrames(a.log.take())) != 0 {
		t.Error("a held packet reached the wire")
	}
	found := false
	for _, d := range a.sw.Snapshot().Drops {
		if d.Reason == "neigh_hold_full" {
			found = d.Packets == 12-neigh.DefaultPendingPerAddr
		}
	}
	if !found {
		t.Error("no neigh_hold_full drops in the snapshot")
	}
}

// arpFrame is an ARP frame from the peer (macB, remoteIP).
func arpFrame(t testing.TB, op uint16, target netip.Addr, dst neigh.MAC) []byte {
	t.Helper()
	a := neigh.ARP{EthDst: dst, EthSrc: macB, Op: op, SenderMAC: macB, SenderIP: remoteIP, TargetIP: target}
	if op == neigh.ARPReply {
		a.TargetMAC = macA
	}
	b := make([]byte, neigh.ARPFrameLen)
	if _, err := neigh.PutARP(b, &a); err != nil {
		t.Fatal(err)
	}
	return b
}

// With a host port: the resolver learns from every ARP frame; a request
// for a user-space-only address is answered by the switch and not given
// to the kernel; a request for an address the kernel owns too (HostAddrs)
// goes to the kernel, which answers, and the resolver's answer is
// discarded; a reply goes to the kernel too (it may have asked).
func TestL2HostPort(t *testing.T) {
	dev, peer, err := memif.NewPair(memif.Options{Name: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	hostSide, kernel, err := memif.NewPair(memif.Options{Name: "host"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostSide.Close() })
	shared := netip.MustParseAddr("198.18.0.2")
	sw, err := flowswitch.New(flowswitch.Options{Link: dev, HostLink: hostSide, SrcMAC: macA,
		LocalAddrs: []netip.Addr{localIP, shared}, HostAddrs: []netip.Addr{shared}})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, peer: peer}
	userReq := arpFrame(t, neigh.ARPRequest, localIP, neigh.Broadcast)
	hostReq := arpFrame(t, neigh.ARPRequest, shared, neigh.Broadcast)
	reply := arpFrame(t, neigh.ARPReply, shared, neigh.MAC(macA))
	r.write(t, userReq, hostReq, reply)
	r.rxOnce(t, 3)

	answers := r.wire(t)
	if len(answers) != 1 {
		t.Fatalf("%d answers on the device, want 1", len(answers))
	}
	var ans neigh.ARP
	if err := neigh.ParseARP(answers[0], &ans); err != nil || ans.Op != neigh.ARPReply || ans.SenderIP != localIP ||
		ans.SenderMAC != neigh.MAC(macA) || ans.TargetIP != remoteIP || ans.EthDst != neigh.MAC(macB) {
		t.Fatalf("answer %+v, %v", ans, err)
	}
	toKernel := readAll(t, kernel)
	if len(toKernel) != 2 || !bytes.Equal(toKernel[0], hostReq) || !bytes.Equal(toKernel[1], reply) {
		t.Fatalf("the kernel got %d frames, want the request for its address and the reply", len(toKernel))
	}
	if mac, st, ok := sw.Neighbors().(*neigh.Resolver).Lookup(remoteIP); !ok || mac != neigh.MAC(macB) || st != neigh.Reachable {
		t.Errorf("the resolver did not learn the peer: %x %v %v", mac, st, ok)
	}
	if st := sw.Stats().L2; st.Frames != 3 || st.Replies != 1 || st.Suppressed != 1 || st.ToHost != 2 {
		t.Errorf("%+v", st)
	}
	if st := sw.Stats(); st.NoFlow != 0 || st.HostDelivered != 2 {
		t.Errorf("stats %+v", st)
	}
}

// A static DstMAC overrides resolution on transmit: frames carry it and
// nothing waits, while ARP is still answered.
func TestL2StaticDstMAC(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	nb, err := neigh.New(neigh.Options{MAC: neigh.MAC(txSrcMAC), Addrs: []netip.Addr{localIP}})
	if err != nil {
		t.Fatal(err)
	}
	sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP},
		SrcMAC: txSrcMAC, DstMAC: txDstMAC, Neighbors: nb})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := channel.New(channel.Options{Name: "static"})
	if err != nil {
		t.Fatal(err)
	}
	app, err := ch.AttachLocal()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close(); ch.Close() })
	r := &rig{sw: sw, peer: b, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{sw.AddPort(ch)}}
	e, err := sw.Register(r.ports[0], packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 5000),
		netip.AddrPortFrom(remoteIP, 6000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	r.send(t, 0, e.ID(), udp0Pkt(100).build(t))
	r.tx(t, 0)
	fr := r.wire(t)
	if len(fr) != 1 || [6]byte(fr[0][0:6]) != txDstMAC {
		t.Fatalf("%d frames, want one to the static MAC", len(fr))
	}
	r.write(t, arpFrame(t, neigh.ARPRequest, localIP, neigh.Broadcast))
	r.rxOnce(t, 1)
	if fr := r.wire(t); len(fr) != 1 {
		t.Fatalf("%d answers, want 1", len(fr))
	}
	if st := sw.Stats().L2; st.Held != 0 || st.Replies != 1 {
		t.Errorf("%+v", st)
	}
}

// Options are checked: a resolver on a raw-IP link is refused, and so is a
// group MAC for the built-in one.
func TestL2Options(t *testing.T) {
	raw, _, err := memif.NewPair(memif.Options{LinkType: packet.RawIP})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	nb, err := neigh.New(neigh.Options{MAC: neigh.MAC(macA)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flowswitch.New(flowswitch.Options{Link: raw, Neighbors: nb}); err == nil {
		t.Error("a resolver on a raw-IP link was accepted")
	}
	eth, _, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer eth.Close()
	if _, err := flowswitch.New(flowswitch.Options{Link: eth, SrcMAC: [6]byte{1, 0, 0, 0, 0, 1}}); err == nil {
		t.Error("a group source MAC was accepted")
	}
	sw, err := flowswitch.New(flowswitch.Options{Link: eth})
	if err != nil || sw.Neighbors() != nil {
		t.Errorf("no MACs: resolver %v, %v", sw.Neighbors(), err)
	}
}

// A listener's SYN-ACKs (sent on the listener flow, which has no remote)
// resolve their next hop from each packet's destination: A asks for B's
// address, not for 0.0.0.0, and the SYN-ACKs reach B with B's MAC.
func TestL2ListenerNextHop(t *testing.T) {
	a, b := newL2Pair(t, nil)
	lis, err := a.sw.Register(a.ports[0], packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(a.v4, 80), netip.AddrPort{}), flow.Listener3)
	if err != nil {
		t.Fatal(err)
	}
	var pkts [][]byte
	for _, sport := range []uint16{40000, 40001} {
		p := txPkt{proto: packet.ProtoTCP, src: a.v4, dst: b.v4, sport: 80, dport: sport,
			flags: packet.TCPSyn | packet.TCPAck, size: 40}
		pkts = append(pkts, p.build(t))
	}
	a.send(t, 0, lis.ID(), pkts...)
	a.tx(t, 0)
	pump(t, a, b)
	frames := a.log.take()
	var asked []netip.Addr
	for _, f := range frames {
		var arp neigh.ARP
		if neigh.ParseARP(f, &arp) == nil && arp.Op == neigh.ARPRequest {
			asked = append(asked, arp.TargetIP)
		}
	}
	if len(asked) == 0 || asked[0] != b.v4 {
		t.Fatalf("A asked for %v, want %v", asked, b.v4)
	}
	ip := ipFrames(frames)
	if len(ip) != 2 {
		t.Fatalf("%d SYN-ACKs on the wire, want 2", len(ip))
	}
	for _, f := range ip {
		if [6]byte(f[0:6]) != b.mac {
			t.Fatalf("SYN-ACK to %x, want B's MAC %x", f[0:6], b.mac)
		}
	}
	if st := a.sw.Stats().L2; st.Held != 2 || st.HoldDrops != 0 {
		t.Fatalf("L2 stats %+v: want both SYN-ACKs held, then sent", st)
	}
}
