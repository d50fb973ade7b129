package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
)

// Addresses of the flowswitch demo, in the benchmarking range 198.18.0.0/15:
// the switch's interface has demoLocal, the traffic generator plays peers
// in 198.19.0.0/16.
var (
	demoLocal   = netip.MustParseAddr("198.18.0.1")
	demoSpoofIP = netip.MustParseAddr("198.18.0.77") // not the interface's
	switchMAC   = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	peerMAC     = [6]byte{0x02, 0, 0, 0, 0, 0xfe}
)

const (
	demoUDPFlows = 20 // app-A: UDP 198.18.0.1:5000+i ↔ 198.19.0.(10+i):6000
	demoTCPFlows = 10 // app-B: TCP 198.18.0.1:7000+i ↔ 198.19.1.(10+i):443
	demoSYNFlood = 100
)

// Payload tags: the generator tells the apps' packets apart by them on the wire.
const (
	tagValid = "valid"
	tagSYN   = "syn"
	tagSpoof = "SPOOF"
)

// switchReport is what the flowswitch part of the demo measured.
type switchReport struct {
	Apps                []appReport       `json:"apps"`
	FramesRead          uint64            `json:"frames_read"`
	InputBatches        uint64            `json:"input_batches"`
	FlowBatches         uint64            `json:"flow_batches"`
	Delivered           uint64            `json:"delivered"`
	Deliveries          uint64            `json:"deliveries"`
	Notifications       uint64            `json:"notifications"`
	PacketsPerDelivery  float64           `json:"packets_per_delivery"`
	PacketsPerFlowBatch float64           `json:"packets_per_flow_batch"`
	SuperPackets        uint64            `json:"tcp_super_packets"`
	Merged              uint64            `json:"tcp_segments_merged"`
	NoFlowSent          int               `json:"no_flow_sent"`
	NoFlowDropped       uint64            `json:"no_flow_dropped"`
	MalformedSent       int               `json:"malformed_sent"`
	MalformedDropped    map[string]uint64 `json:"malformed_dropped"`
	Tx                  txReport          `json:"tx"`
	// Stats is the switch's full snapshot: totals, ports with their rings,
	// every flow, and one counter per drop reason.
	Stats flowswitch.Snapshot `json:"stats"`
}

type appReport struct {
	Name      string `json:"name"`
	Flows     int    `json:"flows"`
	Proto     string `json:"proto"`
	Delivered uint64 `json:"delivered"`
}

type txReport struct {
	Sent          int               `json:"sent"`
	OnWire        uint64            `json:"on_wire"`
	Dropped       map[string]uint64 `json:"dropped"`
	DroppedTotal  uint64            `json:"dropped_total"`
	Attempts      []txAttempt       `json:"attempts"`
	WireFrames    int               `json:"wire_frames"`
	SpoofedOnWire int               `json:"spoofed_on_wire"`
}

// txAttempt is one kind of packet the apps sent, and what became of it.
type txAttempt struct {
	Kind      string            `json:"kind"`
	Sent      int               `json:"sent"`
	OnWire    int               `json:"on_wire"` // seen by the generator
	DroppedBy map[string]uint64 `json:"dropped_by"`
}

// demoApp is one app: its channel (nexus end), its app end and its flows.
type demoApp struct {
	name  string
	ch    *channel.Channel
	app   *channel.App
	port  flow.PortID
	flows []*flow.Entry
	got   atomic.Uint64 // packets the app received
}

// demoSwitch runs the flowswitch part: a switch on one end of a memif wire,
// a traffic generator on the other, two apps.
func demoSwitch() (switchReport, error) {
	var rep switchReport
	swEnd, gen, err := memif.NewPair(memif.Options{Name: "demo", QueueLen: 4096})
	if err != nil {
		return rep, err
	}
	defer swEnd.Close()
	sw, err := flowswitch.New(flowswitch.Options{
		Link: swEnd, LocalAddrs: []netip.Addr{demoLocal}, SrcMAC: switchMAC, DstMAC: peerMAC,
	})
	if err != nil {
		return rep, err
	}
	apps := make([]*demoApp, 2)
	for i, name := range []string{"app-A", "app-B"} {
		ch, err := channel.New(channel.Options{Name: name})
		if err != nil {
			return rep, err
		}
		defer ch.Close()
		app, err := ch.AttachLocal()
		if err != nil {
			return rep, err
		}
		defer app.Close()
		apps[i] = &demoApp{name: name, ch: ch, app: app, port: sw.AddPort(ch)}
	}
	A, B := apps[0], apps[1]
	for i := range demoUDPFlows {
		e, err := sw.Register(A.port, packet.MakeKey(packet.ProtoUDP, udpLocal(i), udpRemote(i)), flow.Connected)
		if err != nil {
			return rep, err
		}
		A.flows = append(A.flows, e)
	}
	for i := range demoTCPFlows {
		e, err := sw.Register(B.port, packet.MakeKey(packet.ProtoTCP, tcpLocal(i), tcpRemote(i)), flow.Connected)
		if err != nil {
			return rep, err
		}
		B.flows = append(B.flows, e)
	}

	if err := demoReceive(sw, gen, apps, &rep); err != nil {
		return rep, err
	}
	if err := demoTransmit(sw, gen, A, B, &rep.Tx); err != nil {
		return rep, err
	}
	st := sw.Stats()
	rep.FramesRead, rep.InputBatches, rep.FlowBatches = st.Packets, st.Batches, st.FlowBatches
	rep.Delivered, rep.Deliveries = st.Delivered, st.Deliveries
	rep.PacketsPerDelivery = ratio(st.Delivered, st.Deliveries)
	rep.PacketsPerFlowBatch = ratio(st.Delivered, st.FlowBatches)
	rep.NoFlowDropped = st.NoFlow
	rep.SuperPackets, rep.Merged = st.SuperPackets, st.Merged
	rep.MalformedDropped = map[string]uint64{}
	for r, n := range st.ParseDrops {
		if n > 0 {
			rep.MalformedDropped[packet.Reason(r).String()] = n
		}
	}
	rep.Apps = []appReport{
		{Name: A.name, Flows: len(A.flows), Proto: "UDP", Delivered: A.ch.Counters().RxPackets},
		{Name: B.name, Flows: len(B.flows), Proto: "TCP", Delivered: B.ch.Counters().RxPackets},
	}
	rep.Tx.OnWire = st.TxPackets
	rep.Tx.Dropped, rep.Tx.DroppedTotal = st.TxDrops.Reasons(), st.TxDrops.Total()
	rep.Stats = sw.Snapshot()
	return rep, nil
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func udpLocal(i int) netip.AddrPort { return netip.AddrPortFrom(demoLocal, uint16(5000+i)) }
func udpRemote(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + i)}), 6000)
}
func tcpLocal(i int) netip.AddrPort { return netip.AddrPortFrom(demoLocal, uint16(7000+i)) }
func tcpRemote(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 1, byte(10 + i)}), 443)
}

// demoReceive has the generator write interleaved traffic of all the flows,
// plus frames of no flow and malformed frames, while each app drains its RX
// ring in its own goroutine, sleeping in Wait when there is nothing.
func demoReceive(sw *flowswitch.Switch, gen netif.Link, apps []*demoApp, rep *switchReport) error {
	rng := rand.New(rand.NewPCG(1, 2))
	nflows := demoUDPFlows + demoTCPFlows
	var rounds [][][]byte
	seq := make([]uint32, demoTCPFlows)
	for round := range 100 {
		var frames [][]byte
		// 6 flows, 4 packets each, interleaved: p1 of every flow, then p2...
		pick := rng.Perm(nflows)[:6]
		for range 4 {
			for _, f := range pick {
				if f < demoUDPFlows {
					frames = append(frames, udpFrame(udpRemote(f), udpLocal(f), []byte(tagValid)))
				} else {
					i := f - demoUDPFlows
					frames = append(frames, tcpFrame(tcpRemote(i), tcpLocal(i), layers.TCP{ACK: true, PSH: true}, seq[i], []byte(tagValid)))
					seq[i] += uint32(len(tagValid))
				}
			}
		}
		if round%5 == 0 { // no flow: an unregistered port, a port scan, ARP
			frames = append(frames,
				udpFrame(udpRemote(0), netip.AddrPortFrom(demoLocal, 9999), []byte("?")),
				tcpFrame(tcpRemote(0), netip.AddrPortFrom(demoLocal, 22), layers.TCP{SYN: true}, 0, nil),
				arpFrame())
			rep.NoFlowSent += 3
		}
		if round%20 == 0 {
			frames = append(frames, malformedFrames()...)
			rep.MalformedSent += len(malformedFrames())
		}
		rounds = append(rounds, frames)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, len(apps))
	for _, a := range apps {
		wg.Go(func() {
			bufs := make([]channel.Buf, 64)
			for !stop.Load() {
				if err := a.app.Wait(5 * time.Millisecond); err != nil {
					errs <- err
					return
				}
				for {
					n, err := a.app.Receive(bufs)
					if err != nil {
						errs <- err
						return
					}
					if n == 0 {
						break
					}
					if _, err := a.app.Free(bufs[:n]); err != nil {
						errs <- err
						return
					}
					a.got.Add(uint64(n))
				}
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for _, frames := range rounds {
		// One burst on the wire, one input batch (at most 32 frames).
		if n, err := gen.Write(frames); err != nil || n != len(frames) {
			return fmt.Errorf("generator write: %d of %d frames: %v", n, len(frames), err)
		}
		var before uint64
		for _, a := range apps {
			before += a.ch.Counters().Notifications
		}
		// The nexus worker's round, run by hand once per burst so that
		// each burst is one input batch; the apps send nothing here, so
		// what it moved is what it read.
		n, _, err := sw.Round(flowswitch.ReadDevice)
		if err != nil {
			return err
		}
		if n != len(frames) {
			return fmt.Errorf("switch read %d of %d frames", n, len(frames))
		}
		for _, a := range apps {
			rep.Notifications += a.ch.Counters().Notifications
		}
		rep.Notifications -= before
		// Let the apps drain this batch (and go back to sleep) before the
		// next one, as a receiver keeping up with the wire would.
		deadline := time.Now().Add(5 * time.Second)
		for _, a := range apps {
			for a.got.Load() < a.ch.Counters().RxPackets {
				if time.Now().After(deadline) {
					return fmt.Errorf("%s did not drain its RX ring", a.name)
				}
				select {
				case err := <-errs:
					return err
				default:
				}
				time.Sleep(50 * time.Microsecond)
			}
			if err := a.ch.Sync(); err != nil {
				return err
			}
		}
		time.Sleep(200 * time.Microsecond) // the apps are back in Wait
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return nil
}

// demoTransmit has each app send valid packets and spoof attempts, the switch
// check them (TxSync), and the generator read what reached the wire.
func demoTransmit(sw *flowswitch.Switch, gen netif.Link, A, B *demoApp, tx *txReport) error {
	payload := func(tag string) []byte { return []byte(tag) }
	type attempt struct {
		kind  string
		sends []func() error
		n     int
	}
	var valid []func() error
	for i, e := range A.flows {
		p := ipUDP(udpLocal(i), udpRemote(i), payload(tagValid))
		valid = append(valid, func() error { return demoSend(A, e.ID(), p, p) })
	}
	for i, e := range B.flows {
		p := ipTCP(tcpLocal(i), tcpRemote(i), layers.TCP{ACK: true, PSH: true}, 1, payload(tagValid))
		valid = append(valid, func() error { return demoSend(B, e.ID(), p, p) })
	}
	spoof := func(kind string) []byte { return payload(tagSpoof + " " + kind) }
	repeat := func(p []byte, n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = p
		}
		return out
	}
	a0 := A.flows[0]
	attempts := []attempt{
		{kind: "valid packets", sends: valid, n: 2 * (len(A.flows) + len(B.flows))},
		{kind: "spoofed source IP", n: 10, sends: []func() error{func() error {
			src := netip.AddrPortFrom(demoSpoofIP, udpLocal(0).Port())
			return demoSend(A, a0.ID(), repeat(ipUDP(src, udpRemote(0), spoof("ip")), 10)...)
		}}},
		{kind: "spoofed source port", n: 10, sends: []func() error{func() error {
			src := netip.AddrPortFrom(demoLocal, 5999)
			return demoSend(A, a0.ID(), repeat(ipUDP(src, udpRemote(0), spoof("port")), 10)...)
		}}},
		{kind: "another app's flow", n: 10, sends: []func() error{func() error {
			// app-B sends on app-A's flow, even with app-A's flow ID.
			return demoSend(B, a0.ID(), repeat(ipUDP(udpLocal(0), udpRemote(0), spoof("owner")), 10)...)
		}}},
		{kind: "wrong flow ID", n: 10, sends: []func() error{func() error {
			// app-A's own flow 1, labelled with flow 0's ID.
			return demoSend(A, a0.ID(), repeat(ipUDP(udpLocal(1), udpRemote(1), spoof("id")), 10)...)
		}}},
		{kind: "SYN flood", n: demoSYNFlood, sends: []func() error{func() error {
			p := ipTCP(tcpLocal(0), tcpRemote(0), layers.TCP{SYN: true}, 0, payload(tagSYN))
			return demoSend(B, B.flows[0].ID(), repeat(p, demoSYNFlood)...)
		}}},
	}
	for _, at := range attempts {
		before := sw.Stats().TxDrops
		for _, send := range at.sends {
			if err := send(); err != nil {
				return fmt.Errorf("%s: %w", at.kind, err)
			}
			for { // one round takes at most 64 per app; the generator's end is read below
				n, _, err := sw.Round(0)
				if err != nil {
					return err
				}
				if n == 0 {
					break
				}
			}
		}
		onWire, spoofed, err := readWire(gen)
		if err != nil {
			return err
		}
		tx.Sent += at.n
		tx.WireFrames += onWire
		tx.SpoofedOnWire += spoofed
		drops := map[string]uint64{}
		after := sw.Stats().TxDrops.Reasons()
		for k, v := range before.Reasons() {
			if d := after[k] - v; d > 0 {
				drops[k] = d
			}
		}
		tx.Attempts = append(tx.Attempts, txAttempt{Kind: at.kind, Sent: at.n, OnWire: onWire, DroppedBy: drops})
	}
	return nil
}

// demoSend has app a send pkts, each labelled with flow ID id in its
// metadata (App.Meta), as an app would.
func demoSend(a *demoApp, id [16]byte, pkts ...[]byte) error {
	bufs := make([]channel.Buf, 0, len(pkts))
	for tries := 0; len(bufs) < len(pkts); tries++ {
		if tries > 1000 {
			return errors.New("no buffers")
		}
		if err := a.ch.Sync(); err != nil { // the nexus refills the alloc ring
			return err
		}
		n, err := a.app.Alloc(bufs[len(bufs):len(pkts)])
		if err != nil {
			return err
		}
		bufs = bufs[:len(bufs)+n]
	}
	for i, b := range bufs {
		bufs[i].Data = b.Data[:copy(b.Data, pkts[i])]
		meta, err := a.app.Meta(b.Index)
		if err != nil {
			return err
		}
		clear(meta)
		copy(meta[channel.TxMetaFlowIDOff:], id[:])
	}
	for len(bufs) > 0 {
		n, err := a.app.Send(bufs)
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("TX ring full")
		}
		bufs = bufs[n:]
	}
	return nil
}

// readWire reads every frame at the generator's end and checks it: it must
// come from the switch's MAC and the interface's address, and must not be
// one of the spoof attempts (payload tag). It returns the frames and the
// spoofed ones among them.
func readWire(gen netif.Link) (frames, spoofed int, err error) {
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(gen.MTU(), gen.LinkType()))
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := gen.Read(bufs, sizes)
		if err != nil {
			return frames, spoofed, err
		}
		if n == 0 {
			return frames, spoofed, nil
		}
		for i := range n {
			frames++
			pkt := gopacket.NewPacket(bufs[i][:sizes[i]], layers.LayerTypeEthernet, gopacket.NoCopy)
			eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			var pl []byte
			if app := pkt.ApplicationLayer(); app != nil {
				pl = app.Payload()
			}
			if eth == nil || ip == nil || !bytes.Equal(eth.SrcMAC, switchMAC[:]) ||
				!ip.SrcIP.Equal(demoLocal.AsSlice()) || bytes.HasPrefix(pl, []byte(tagSpoof)) {
				spoofed++
			}
		}
	}
}

// Frame builders of the traffic generator (gopacket layers).

func serialize(ls ...gopacket.SerializableLayer) []byte {
	sb := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		panic(err) // the demo's own layers: a bug
	}
	return append([]byte(nil), sb.Bytes()...)
}

func ethLayer(t layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: net.HardwareAddr(peerMAC[:]), DstMAC: net.HardwareAddr(switchMAC[:]), EthernetType: t}
}

func ipLayer(proto layers.IPProtocol, src, dst netip.Addr) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

func udpLayers(src, dst netip.AddrPort) (*layers.IPv4, *layers.UDP) {
	ip := ipLayer(layers.IPProtocolUDP, src.Addr(), dst.Addr())
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = u.SetNetworkLayerForChecksum(ip)
	return ip, u
}

func tcpLayers(src, dst netip.AddrPort, t layers.TCP, seq uint32) (*layers.IPv4, *layers.TCP) {
	ip := ipLayer(layers.IPProtocolTCP, src.Addr(), dst.Addr())
	t.SrcPort, t.DstPort, t.Seq, t.Window = layers.TCPPort(src.Port()), layers.TCPPort(dst.Port()), seq, 65535
	_ = t.SetNetworkLayerForChecksum(ip)
	return ip, &t
}

func udpFrame(src, dst netip.AddrPort, pl []byte) []byte {
	ip, u := udpLayers(src, dst)
	return serialize(ethLayer(layers.EthernetTypeIPv4), ip, u, gopacket.Payload(pl))
}

func tcpFrame(src, dst netip.AddrPort, t layers.TCP, seq uint32, pl []byte) []byte {
	ip, tc := tcpLayers(src, dst, t, seq)
	return serialize(ethLayer(layers.EthernetTypeIPv4), ip, tc, gopacket.Payload(pl))
}

func ipUDP(src, dst netip.AddrPort, pl []byte) []byte {
	ip, u := udpLayers(src, dst)
	return serialize(ip, u, gopacket.Payload(pl))
}

func ipTCP(src, dst netip.AddrPort, t layers.TCP, seq uint32, pl []byte) []byte {
	ip, tc := tcpLayers(src, dst, t, seq)
	return serialize(ip, tc, gopacket.Payload(pl))
}

func arpFrame() []byte {
	return serialize(ethLayer(layers.EthernetTypeARP), &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: peerMAC[:], SourceProtAddress: udpRemote(0).Addr().AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: demoLocal.AsSlice(),
	})
}

// malformedFrames returns one frame of each kind of damage the parser names.
func malformedFrames() [][]byte {
	good := func() []byte { return udpFrame(udpRemote(0), udpLocal(0), []byte("malformed")) }
	runt := good()[:10] // shorter than an Ethernet header
	trunc := good()[:14+12]
	version := good()
	version[14] = 5<<4 | version[14]&0x0f
	udpLen := good()
	binary.BigEndian.PutUint16(udpLen[14+20+4:], 4)
	tcp := tcpFrame(tcpRemote(0), tcpLocal(0), layers.TCP{ACK: true}, 0, []byte("x"))
	tcp[14+20+12] = 2 << 4 // data offset 2 words
	return [][]byte{runt, trunc, version, udpLen, tcp}
}

// isSpoof tells the attempts the report calls spoofs (all but the valid
// packets and the SYN flood, whose first SYNBurst SYNs are allowed).
func isSpoof(kind string) bool {
	return strings.HasPrefix(kind, "spoofed") || kind == "another app's flow" || kind == "wrong flow ID"
}
