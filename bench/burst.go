package bench

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/regulate"
)

// The burst scenario (docs/design.md §7): a memif wire limited to
// burstRate carries eight bulk flows, each from its own app (channel),
// and one small request/response flow (RPC) from another app; the peer
// end counts the bulk bytes per flow and answers each request at once.
// Each round runs four trials, each on a fresh wire and nexus.Nexus (whose
// worker runs the datapath, as in `skylane serve`):
//
//   - ours: the switch with Regulation (fq_codel AQM of 2048 packets,
//     flow advisories, round-robin TX, paced at the link rate);
//   - baseline: the same switch without it, so the device's own FIFO of
//     the same length (the memif queue, 2048 frames) is the transmit
//     queue, tail-dropping when full;
//   - idle: ours with the RPC flow alone, for its idle latency;
//   - unresponsive: ours plus one app that ignores advisories: its port
//     is opened without them (nexus.PortOptions.Advisories false) and it
//     blasts raw UDP at burstBlastRate (twice the link's rate) whatever
//     the switch says, as raw UDP without a stack does. The AQM can only
//     drop its packets (early, or CoDel), never suspend it.
//
// The unresponsive app runs in its own regulated trial only, not in the
// ours and FIFO trials the rows compare: the rows keep their meaning and
// stay comparable with earlier figures. With it present, DRR gives it a
// fair share of the link (one flow of nine), which would lower
// bulk-utilisation by design rather than by any fault of regulation, and
// under the FIFO its share would depend on the order the switch serves
// the ports, not on anything the rows measure. Its trial's figures are
// extras (unresp_*): the blaster's packets sent, delivered and dropped,
// the AQM's drops (early, CoDel, overflow), the advisories, the eight
// advisory flows' own AQM drops (zero: they are suspended instead) and
// the RPC's p99 beside it (goal as for the row: idle p99 + 2 × target).
//
// The bulk apps are raw channel senders that honour advisories: they read
// their flow's advisory entry before each batch and send nothing while it
// is SUSPENDED, sleeping until the resume's event (netstack's TCP, which
// honours them in the stack, comes with the stack's bench; under the FIFO
// nothing is ever suspended, so they send as fast as their TX ring
// drains). The RPC app sends 64-byte requests in a closed loop, resending
// a request unanswered for burstRPCRetry as TCP would, and sleeps on its
// RX ring for each answer.
//
// Rows: rpc-p99-under-bulk (the RPC's p99 round trip in ms while the bulk
// flows saturate the link; lower is better, ratio = FIFO / ours; a request
// given up as lost counts as longer than burstRPCWait, and a trial kind
// whose requests went unanswered is a lower bound, not an error:
// burstP99),
// bulk-utilisation (the bulk flows' share of the link, 0–1, ratio = ours /
// FIFO) and fairness/flows=8 (Jain's index of the eight bulk flows'
// throughput). Extras: the AQM's drops (CoDel, overflow, early), the
// advisory suspends and resumes published, the FIFO's tail drops.
//
// With Config.Dev (`skylane bench burst --dev`, root) the same trials run
// on a veth pair instead, the far end the kernel's own stack in another
// namespace, the rows prefixed "veth/" (burstveth.go: the wire, and how
// the FIFO trial gets the same rate and queue length there). A burstWire
// says where the trials run; everything else is shared.
const (
	burstScenario  = "burst"
	burstRowRPC    = "rpc-p99-under-bulk"
	burstRowUtil   = "bulk-utilisation"
	burstRowFair   = "fairness/flows=8"
	burstBaseName  = "plain FIFO transmit queue of 2048 frames (regulation off)"
	burstRate      = 100_000_000 // bits/s on the wire
	burstQueue     = regulate.DefaultLimit
	burstBulkFlows = 8
	burstBulkSize  = 1500 // IP bytes: full frames
	burstRPCSize   = 64
	burstRPCWait   = 2 * time.Second        // a request unanswered this long is lost
	burstRPCRetry  = 200 * time.Millisecond // resent this often until answered (TCP's minimum RTO)
	burstPoll      = 50 * time.Microsecond  // the RPC app's RX poll
	burstFullWait  = 200 * time.Microsecond // a bulk app whose TX ring is full tries again
	burstEthLen    = 14
	burstBulkPort  = 9999 // remote port of the bulk flows
	burstRPCPort   = 7777 // remote port of the RPC flow
	burstRPCLocal  = 7000
	burstBulkLocal = 9000 // + flow index
	burstBlastPort = 5555 // remote port of the unresponsive app's flow
	burstBlastLoc  = 5000
	burstBlastRate = 2 * burstRate // bits/s of IP bytes the unresponsive app sends
	burstBlastMax  = 64            // packets it may fall behind its rate before it gives them up
)

var (
	burstSrcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x11}
	burstDstMAC = [6]byte{0x02, 0, 0, 0, 0, 0x22}
	burstLocal  = netip.MustParseAddr("198.18.0.1")
	burstRemote = netip.MustParseAddr("198.19.0.2")
)

// burstApp is one app: its nexus port, the port's app end and its flow.
type burstApp struct {
	port *nexus.Port
	app  *channel.App
	flow channel.FlowInfo
	pkt  []byte // the IP packet it sends
}

// burstWire is where the scenario runs: the memif wire (memifBurstWire) or
// a veth pair with the kernel's stack at the far end (burstveth.go).
type burstWire struct {
	prefix   string // of the row names: "" on memif
	baseName string
	remote   netip.Addr // the far end's address
	// srcMAC and dstMAC are the switch's static Ethernet addresses.
	srcMAC, dstMAC [6]byte
	// open makes a trial's link and its far end: a netif.Link the peerLoop
	// serves, or a kernel peer (exactly one of peer and kpeer is non-nil).
	open func() (dev, peer netif.Link, kpeer *burstKernelPeer, err error)
	// paceFIFO: the device has no rate of its own, so the FIFO trial puts
	// a burstFIFO (2048 frames paced at burstRate) between the switch and
	// the device; on memif the wire's own queue and rate are the FIFO.
	paceFIFO bool
	extra    map[string]any // added to every row's extras
}

// memifBurstWire is the memif wire limited to burstRate, its queue
// burstQueue frames.
func memifBurstWire() burstWire {
	return burstWire{baseName: burstBaseName, remote: burstRemote, srcMAC: burstSrcMAC, dstMAC: burstDstMAC,
		open: func() (netif.Link, netif.Link, *burstKernelPeer, error) {
			dev, peer, err := memif.NewPair(memif.Options{Name: "burst", QueueLen: burstQueue, Rate: burstRate})
			return dev, peer, nil, err
		}}
}

// burstRig is one trial's wire, nexus and apps. The nexus's worker runs
// the datapath, as in `skylane serve`: the apps kick their ports after
// they send or free, and sleep on their channels.
type burstRig struct {
	regulated bool
	dev, peer netif.Link
	kpeer     *burstKernelPeer // the far end when it is the kernel's stack (peer nil)
	fifo      *burstFIFO       // the FIFO trial's paced queue on a device with no rate of its own
	nx        *nexus.Nexus     // owns dev once made
	nxErr     error            // nx.Close's error; nx is nil once closed
	bulk      []*burstApp
	rpc       *burstApp
	blast     *burstApp     // the unresponsive app; nil in most trials
	ports     []*nexus.Port // every app's, for close

	bulkBytes [burstBulkFlows]atomic.Uint64 // frame bytes the peer received per bulk flow
	blastSent atomic.Uint64                 // packets the unresponsive app put on its TX ring
	blastRecv atomic.Uint64                 // of those, the packets the peer received

	mu      sync.Mutex
	rtts    []time.Duration // the RPC's round trips, in order
	rpcLost int

	stop chan struct{}
	wg   sync.WaitGroup
	errs chan error
}

func newBurstRig(w *burstWire, regulated, blaster bool) (_ *burstRig, err error) {
	dev, peer, kpeer, err := w.open()
	if err != nil {
		return nil, err
	}
	r := &burstRig{regulated: regulated, dev: dev, peer: peer, kpeer: kpeer, stop: make(chan struct{}), errs: make(chan error, 16)}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	o := flowswitch.Options{SrcMAC: w.srcMAC, DstMAC: w.dstMAC}
	switch {
	case regulated:
		o.Regulation, o.LinkRate = &flowswitch.RegulationOptions{}, burstRate
	case w.paceFIFO:
		if r.fifo, err = newBurstFIFO(dev); err != nil {
			return nil, err
		}
		o.TxQueue = r.fifo
	}
	if r.nx, err = nexus.New(nexus.Options{Link: dev, Addrs: []netip.Addr{burstLocal}, Switch: o}); err != nil {
		return nil, err
	}
	mk := func(name string, adv bool, lport, rport uint16, size int) (*burstApp, error) {
		port, err := r.nx.OpenPortWith(name, nexus.PortOptions{Advisories: adv})
		if err != nil {
			return nil, err
		}
		a := &burstApp{port: port, app: port.App()}
		r.ports = append(r.ports, port) // closed by r.close
		l, rm := netip.AddrPortFrom(burstLocal, lport), netip.AddrPortFrom(w.remote, rport)
		// On a steering device (AF_XDP, AF_PACKET's TC program) the nexus
		// steers the flow's packets to itself, not to the kernel.
		if a.flow, err = port.Register(packet.MakeKey(packet.ProtoUDP, l, rm), flow.Connected); err != nil {
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
		f := packettest.Frame{Link: packet.RawIP, Src: l, Dst: rm, Proto: packet.ProtoUDP, Payload: make([]byte, 8), Size: size}
		a.pkt = f.Bytes()
		return a, nil
	}
	// The RPC app's port comes first: without regulation the switch serves
	// the ports in order, and a last port would find the FIFO full every
	// time; first, it measures the FIFO's queueing delay, not the port
	// order.
	if r.rpc, err = mk("rpc", false, burstRPCLocal, burstRPCPort, burstRPCSize); err != nil {
		return nil, err
	}
	// No UDP checksum (0, RFC 768): the RPC app writes a sequence number
	// into each request, and a kernel peer checks checksums.
	binary.BigEndian.PutUint16(r.rpc.pkt[26:28], 0)
	for i := range burstBulkFlows {
		a, err := mk(fmt.Sprintf("bulk%d", i), true, uint16(burstBulkLocal+i), burstBulkPort, burstBulkSize)
		if err != nil {
			return nil, err
		}
		r.bulk = append(r.bulk, a)
	}
	if blaster { // no advisories: the AQM drops its excess early
		if r.blast, err = mk("blast", false, burstBlastLoc, burstBlastPort, burstBulkSize); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// start runs the peer and the apps (the bulk ones if bulk); the nexus
// runs already.
func (r *burstRig) start(bulk bool) {
	if r.peer != nil {
		r.goRun(r.peerLoop)
	} else {
		r.kpeer.start(r)
	}
	if bulk {
		for _, a := range r.bulk {
			r.goRun(func() error { return r.bulkLoop(a) })
		}
	}
	if r.blast != nil {
		r.goRun(r.blastLoop)
	}
	r.goRun(r.rpcLoop)
}

func (r *burstRig) goRun(f func() error) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := f(); err != nil {
			r.errs <- err
		}
	}()
}

// halt stops the apps and the peer, and returns the errors they met.
func (r *burstRig) halt() error {
	close(r.stop)
	if r.kpeer != nil {
		r.kpeer.close() // unblocks its readers
	}
	r.wg.Wait()
	close(r.errs)
	var err error
	for e := range r.errs {
		err = errors.Join(err, e)
	}
	return err
}

// close closes the ports, the nexus (and with it the device) and the
// kernel peer; it returns the nexus's error (a failed link). Safe to call
// again: later calls return the same error.
func (r *burstRig) close() error {
	for _, p := range r.ports {
		if err := p.Close(); err != nil {
			r.nxErr = errors.Join(r.nxErr, err)
		}
	}
	r.ports = nil
	if r.kpeer != nil {
		r.kpeer.close()
	}
	switch {
	case r.nx != nil:
		r.nxErr = errors.Join(r.nxErr, r.nx.Close())
		r.nx, r.dev = nil, nil
	case r.dev != nil: // the nexus was never made: the device is ours
		r.dev.Close()
		r.dev = nil
	}
	return r.nxErr
}

func (r *burstRig) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

// peerLoop is the far end: it counts the bulk frames per flow and answers
// each RPC request with the same frame, addresses and ports swapped.
func (r *burstRig) peerLoop() error {
	frameLen := netif.MaxFrameLen(r.peer.MTU(), r.peer.LinkType())
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, frameLen)
	}
	sizes := make([]int, len(bufs))
	var answers [][]byte
	for !r.stopped() {
		if err := r.peer.Wait(5 * time.Millisecond); err != nil {
			return fmt.Errorf("peer wait: %w", err)
		}
		n, err := r.peer.Read(bufs, sizes)
		if err != nil {
			return fmt.Errorf("peer read: %w", err)
		}
		answers = answers[:0]
		for i, f := range bufs[:n] {
			f = f[:sizes[i]]
			if len(f) < burstEthLen+28 || f[burstEthLen+9] != packet.ProtoUDP {
				continue
			}
			udp := f[burstEthLen+20:]
			sport, dport := binary.BigEndian.Uint16(udp[0:2]), binary.BigEndian.Uint16(udp[2:4])
			switch {
			case dport == burstBulkPort && sport >= burstBulkLocal && sport < burstBulkLocal+burstBulkFlows:
				r.bulkBytes[sport-burstBulkLocal].Add(uint64(len(f)))
			case dport == burstBlastPort:
				r.blastRecv.Add(1)
			case dport == burstRPCPort:
				swapBurst(f)
				answers = append(answers, f)
			}
		}
		if len(answers) > 0 {
			if _, err := r.peer.Write(answers); err != nil {
				return fmt.Errorf("peer answer: %w", err)
			}
		}
	}
	return nil
}

// swapBurst turns a request frame into its answer: MACs, IPv4 addresses
// and UDP ports swapped (the checksums stay valid: their sums commute).
func swapBurst(f []byte) {
	var t [6]byte
	copy(t[:], f[0:6])
	copy(f[0:6], f[6:12])
	copy(f[6:12], t[:])
	ip := f[burstEthLen:]
	var a [4]byte
	copy(a[:], ip[12:16])
	copy(ip[12:16], ip[16:20])
	copy(ip[16:20], a[:])
	udp := ip[20:]
	p := binary.BigEndian.Uint16(udp[0:2])
	copy(udp[0:2], udp[2:4])
	binary.BigEndian.PutUint16(udp[2:4], p)
}

// bulkLoop is a bulk app: full-size packets as fast as its TX ring takes
// them, nothing while its flow is suspended.
func (r *burstRig) bulkLoop(a *burstApp) error {
	idx, id := a.flow.Advisory, a.flow.ID
	bufs := make([]channel.Buf, 16)
	evs := make([]channel.Event, 32)
	for !r.stopped() {
		if _, err := a.app.Events(evs); err != nil { // segments to map; keeps the ring from overflowing
			return fmt.Errorf("bulk events: %w", err)
		}
		if !a.app.Admissible(idx) {
			// Suspended: sleep until an event (the resume posts one; the
			// events were read above). The timeout is a safety net.
			if _, err := a.app.WaitFor(channel.WaitEvents, 50*time.Millisecond); err != nil {
				return fmt.Errorf("bulk wait: %w", err)
			}
			continue
		}
		k, err := a.app.Alloc(bufs)
		if err != nil {
			return fmt.Errorf("bulk alloc: %w", err)
		}
		if k == 0 { // the nexus has not refilled the alloc ring yet
			a.port.Kick()
			if _, err := a.app.WaitFor(channel.WaitAlloc, 10*time.Millisecond); err != nil {
				return fmt.Errorf("bulk wait: %w", err)
			}
			continue
		}
		if err := fillBurst(a, bufs[:k], &id); err != nil {
			return err
		}
		sent, err := a.app.Send(bufs[:k])
		if err != nil {
			return fmt.Errorf("bulk send: %w", err)
		}
		if sent < k { // TX ring full: back-pressure; give the rest back and wait
			if _, err := a.app.Free(bufs[sent:k]); err != nil {
				return fmt.Errorf("bulk free: %w", err)
			}
			a.port.Kick()
			time.Sleep(burstFullWait)
			continue
		}
		a.port.Kick()
	}
	return nil
}

// blastLoop is the unresponsive app: full-size packets at burstBlastRate,
// paced by the clock, whatever its advisory entry says (its port has
// none) and whatever the link takes. A full TX ring costs it the packets
// (they are counted as not sent); falling more than burstBlastMax packets
// behind its rate, it gives up the backlog rather than bursting it.
func (r *burstRig) blastLoop() error {
	a := r.blast
	id := a.flow.ID
	bufs := make([]channel.Buf, 16)
	evs := make([]channel.Event, 32)
	pktTime := time.Duration(float64(len(a.pkt)*8) / burstBlastRate * float64(time.Second))
	t0, issued := time.Now(), int64(0)
	for !r.stopped() {
		if _, err := a.app.Events(evs); err != nil { // read, never acted on
			return fmt.Errorf("blast events: %w", err)
		}
		due := int64(time.Since(t0)/pktTime) - issued
		if due > burstBlastMax {
			issued += due - burstBlastMax
			due = burstBlastMax
		}
		if due <= 0 {
			time.Sleep(pktTime)
			continue
		}
		k, err := a.app.Alloc(bufs[:min(int(due), len(bufs))])
		if err != nil {
			return fmt.Errorf("blast alloc: %w", err)
		}
		if k == 0 {
			a.port.Kick()
			if _, err := a.app.WaitFor(channel.WaitAlloc, 10*time.Millisecond); err != nil {
				return fmt.Errorf("blast wait: %w", err)
			}
			continue
		}
		if err := fillBurst(a, bufs[:k], &id); err != nil {
			return err
		}
		sent, err := a.app.Send(bufs[:k])
		if err != nil {
			return fmt.Errorf("blast send: %w", err)
		}
		issued += int64(k) // a refused packet is lost, as with a full socket buffer
		r.blastSent.Add(uint64(sent))
		if sent < k {
			if _, err := a.app.Free(bufs[sent:k]); err != nil {
				return fmt.Errorf("blast free: %w", err)
			}
		}
		a.port.Kick()
	}
	return nil
}

// fillBurst writes a's packet and flow ID into each buffer.
func fillBurst(a *burstApp, bufs []channel.Buf, id *[16]byte) error {
	for i := range bufs {
		b := &bufs[i]
		b.Data = b.Data[:copy(b.Data, a.pkt)]
		m, err := a.app.Meta(b.Index)
		if err != nil {
			return fmt.Errorf("meta: %w", err)
		}
		clear(m)
		copy(m[channel.TxMetaFlowIDOff:], id[:])
	}
	return nil
}

// rpcLoop is the RPC app: one request at a time, each carrying its
// sequence number, resent every burstRPCRetry until answered (as TCP
// would), and the round trip from its first sending recorded.
func (r *burstRig) rpcLoop() error {
	a := r.rpc
	id := a.flow.ID
	one := make([]channel.Buf, 1)
	rx := make([]channel.Buf, 16)
	evs := make([]channel.Event, 32)
	send := func(seq uint64) error {
		for !r.stopped() {
			if _, err := a.app.Events(evs); err != nil {
				return fmt.Errorf("rpc events: %w", err)
			}
			k, err := a.app.Alloc(one)
			if err != nil {
				return fmt.Errorf("rpc alloc: %w", err)
			}
			if k == 1 {
				break
			}
			a.port.Kick()
			if _, err := a.app.WaitFor(channel.WaitAlloc, 10*time.Millisecond); err != nil {
				return fmt.Errorf("rpc wait: %w", err)
			}
		}
		if r.stopped() {
			return nil
		}
		if err := fillBurst(a, one, &id); err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(one[0].Data[28:], seq)
		if n, err := a.app.Send(one); err != nil || n != 1 {
			return fmt.Errorf("rpc send: %d, %v", n, err)
		}
		a.port.Kick()
		return nil
	}
	for seq := uint64(1); !r.stopped(); seq++ {
		t0 := time.Now()
		if err := send(seq); err != nil {
			return err
		}
		last := t0
		answered := false
		for !answered && !r.stopped() {
			n, err := a.app.Receive(rx)
			if err != nil {
				return fmt.Errorf("rpc receive: %w", err)
			}
			for _, b := range rx[:n] {
				if len(b.Data) >= 36 && binary.LittleEndian.Uint64(b.Data[28:]) == seq {
					answered = true
				}
			}
			if n > 0 {
				if _, err := a.app.Free(rx[:n]); err != nil {
					return fmt.Errorf("rpc free: %w", err)
				}
				a.port.Kick()
			}
			if answered {
				rtt := time.Since(t0)
				r.mu.Lock()
				r.rtts = append(r.rtts, rtt)
				r.mu.Unlock()
				break
			}
			if time.Since(t0) > burstRPCWait {
				r.mu.Lock()
				r.rpcLost++
				r.mu.Unlock()
				break
			}
			if time.Since(last) >= burstRPCRetry {
				last = time.Now()
				if err := send(seq); err != nil {
					return err
				}
			}
			// Sleep until the answer (or the next retry).
			if _, err := a.app.WaitFor(channel.WaitRX, burstRPCRetry-time.Since(last)+time.Millisecond); err != nil {
				return fmt.Errorf("rpc wait: %w", err)
			}
		}
	}
	return nil
}

// burstTrial is what one trial measured over its window.
type burstTrial struct {
	rtts    []time.Duration
	lost    int
	bytes   [burstBulkFlows]uint64
	elapsed time.Duration
	snap    flowswitch.Snapshot
	dev     netif.Stats // the switch's end of the wire
	// fifoDrops are the FIFO's tail drops: the memif queue's (dev's
	// TxDrops), or the burstFIFO's and the device's.
	fifoDrops uint64

	bulkAQMDrops uint64 // the bulk (advisory) flows' CoDel and overflow drops, per the flow table
	blastSent    uint64 // the unresponsive app's packets sent and received by the peer, whole trial
	blastRecv    uint64
}

func (t *burstTrial) utilisation() float64 {
	var sum uint64
	for _, b := range t.bytes {
		sum += b
	}
	return float64(sum*8) / t.elapsed.Seconds() / burstRate
}

func (t *burstTrial) jain() float64 { return regulate.Jain(t.bytes[:]) }

// runBurstTrial builds a fresh rig, lets it settle for warmup, then
// measures for d.
func runBurstTrial(w *burstWire, regulated, bulk, blaster bool, warmup, d time.Duration) (burstTrial, error) {
	r, err := newBurstRig(w, regulated, blaster)
	if err != nil {
		return burstTrial{}, err
	}
	defer r.close()
	r.start(bulk)
	time.Sleep(warmup) // the queues fill: the measured window is the steady state
	var before [burstBulkFlows]uint64
	for i := range before {
		before[i] = r.bulkBytes[i].Load()
	}
	r.mu.Lock()
	from, lost0 := len(r.rtts), r.rpcLost
	r.mu.Unlock()
	t0 := time.Now()
	time.Sleep(d) // the measured window
	var tr burstTrial
	for i := range tr.bytes {
		tr.bytes[i] = r.bulkBytes[i].Load() - before[i]
	}
	tr.elapsed = time.Since(t0)
	r.mu.Lock()
	tr.rtts, tr.lost = slices.Clone(r.rtts[from:]), r.rpcLost-lost0
	r.mu.Unlock()
	if err := r.halt(); err != nil {
		return tr, err
	}
	if tr.snap, err = r.nx.Snapshot(); err != nil {
		return tr, err
	}
	st, err := r.nx.Stats()
	if err != nil {
		return tr, err
	}
	tr.dev = st.Link
	tr.fifoDrops = tr.dev.TxDrops
	// The FIFO is the worker's: read once the worker is gone.
	if err := r.close(); err != nil {
		return tr, err
	}
	if r.fifo != nil {
		tr.fifoDrops += r.fifo.drops
	}
	bulkFlows := map[string]bool{}
	for _, a := range r.bulk {
		bulkFlows[hex.EncodeToString(a.flow.ID[:])] = true
	}
	for _, f := range tr.snap.Flows {
		if bulkFlows[f.ID] {
			tr.bulkAQMDrops += f.AQMDrops
		}
	}
	tr.blastSent, tr.blastRecv = r.blastSent.Load(), r.blastRecv.Load()
	return tr, nil
}

// burstLatency is the p99 round trip of a kind of trial, in ms, or a
// lower bound of it (bound BoundLower).
type burstLatency struct {
	ms    float64
	bound string
}

// burstP99 returns the p99 round trip of the trials ts, pooled. A request
// given up as lost (unanswered for burstRPCWait) is a round trip above
// burstRPCWait: when the p99 falls on one, it is known only to be above
// burstRPCWait. A window in which no request was answered nor lost is a
// result too, not an error: the RPC loop is closed, so one request was in
// flight for the whole window (waiting for a buffer, in the queue, or
// resent), and the p99 is above the window's length (the shortest, if
// several). So a FIFO too slow to answer in a short window still has a
// figure, marked as a bound.
func burstP99(ts []burstTrial) burstLatency {
	var rtts []time.Duration
	lost := 0
	window := time.Duration(0)
	for i, t := range ts {
		rtts = append(rtts, t.rtts...)
		lost += t.lost
		if i == 0 || t.elapsed < window {
			window = t.elapsed
		}
	}
	n := len(rtts) + lost
	if n == 0 {
		return burstLatency{ms: float64(window) / 1e6, bound: BoundLower}
	}
	slices.Sort(rtts)
	i := min(n*99/100, n-1)
	if i >= len(rtts) { // a lost one: they sort after every answer
		return burstLatency{ms: float64(burstRPCWait) / 1e6, bound: BoundLower}
	}
	return burstLatency{ms: float64(rtts[i]) / 1e6}
}

func burstRound2(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }

func runBurst(cfg Config) (Report, error) {
	if cfg.Dev {
		return runBurstDev(cfg)
	}
	if cfg.Driver != "" {
		return Report{}, fmt.Errorf("burst: driver %q is for the veth rows: add --dev", cfg.Driver)
	}
	w := memifBurstWire()
	return runBurstOn(cfg, &w)
}

// burstWanted reports whether cfg wants any of w's rows.
func burstWanted(cfg Config, w *burstWire) bool {
	return cfg.wants(w.prefix+burstRowRPC) || cfg.wants(w.prefix+burstRowUtil) || cfg.wants(w.prefix+burstRowFair)
}

// runBurstOn runs the scenario's trials on w and makes its rows.
func runBurstOn(cfg Config, w *burstWire) (Report, error) {
	rep := Report{Scenario: burstScenario, Machine: Machine()}
	if !burstWanted(cfg, w) {
		return rep, nil
	}
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	if d <= 0 {
		return rep, fmt.Errorf("burst: duration %v too short", cfg.Duration)
	}
	// Long enough for the FIFO to fill (2048 frames at 100 Mbit/s take
	// 250 ms) and the advisories to settle.
	warmup := min(max(d/2, 100*time.Millisecond), 500*time.Millisecond)
	var ours, base, idle, mixed []burstTrial
	for i := range rounds {
		if err := cfg.roundStart("burst "+cmp.Or(strings.TrimSuffix(w.prefix, "/"), "memif"), i, rounds); err != nil {
			return rep, err
		}
		for _, t := range []struct {
			regulated, bulk, blast bool
			into                   *[]burstTrial
			name                   string
		}{{true, true, false, &ours, "regulated"}, {false, true, false, &base, "fifo"}, {true, false, false, &idle, "idle"},
			{true, true, true, &mixed, "unresponsive"}} {
			tr, err := runBurstTrial(w, t.regulated, t.bulk, t.blast, warmup, d)
			if err != nil {
				return rep, fmt.Errorf("burst %s trial: %w", t.name, err)
			}
			*t.into = append(*t.into, tr)
		}
	}
	count := func(ts []burstTrial) (answered, lost int) {
		for _, t := range ts {
			answered += len(t.rtts)
			lost += t.lost
		}
		return answered, lost
	}
	oN, oLost := count(ours)
	bN, bLost := count(base)
	iN, _ := count(idle)
	_, mLost := count(mixed)
	med := func(ts []burstTrial, f func(*burstTrial) float64) float64 {
		v := make([]float64, len(ts))
		for i := range ts {
			v[i] = f(&ts[i])
		}
		return median(v)
	}
	// The AQM's and the FIFO's drops and the advisories, summed over the
	// regulated trials (FIFO trials for the device drops).
	var codel, overflow, early, susp, resume, backp, fifoDrops, bulkDrops uint64
	for _, t := range ours {
		bulkDrops += t.bulkAQMDrops
		if rg := t.snap.Regulation; rg != nil {
			codel += rg.CoDelDrops
			overflow += rg.OverflowDrops
			early += rg.EarlyDrops
			susp += rg.Suspends
			resume += rg.Resumes
			backp += rg.Backpressured
		}
	}
	for _, t := range base {
		fifoDrops += t.fifoDrops
	}
	// The unresponsive trials: the same sums, and the blaster's packets.
	var mCodel, mOverflow, mEarly, mSusp, mResume, mBulkDrops, bSent, bRecv uint64
	for _, t := range mixed {
		if rg := t.snap.Regulation; rg != nil {
			mCodel += rg.CoDelDrops
			mOverflow += rg.OverflowDrops
			mEarly += rg.EarlyDrops
			mSusp += rg.Suspends
			mResume += rg.Resumes
		}
		mBulkDrops += t.bulkAQMDrops
		bSent += t.blastSent
		bRecv += t.blastRecv
	}
	target := float64(regulate.DefaultTarget) / 1e6
	idleP99, mP99 := burstP99(idle), burstP99(mixed)
	extra := func() map[string]any {
		x := map[string]any{
			"bulk_aqm_drops":         bulkDrops,
			"unresp_rate_mbit_s":     burstBlastRate / 1e6,
			"unresp_sent":            bSent,
			"unresp_delivered":       bRecv,
			"unresp_dropped":         bSent - min(bRecv, bSent), // sent − delivered: the AQM's drops plus the few in flight at the end
			"unresp_aqm_codel_drops": mCodel, "unresp_aqm_overflow_drops": mOverflow, "unresp_aqm_early_drops": mEarly,
			"unresp_advisory_suspends": mSusp, "unresp_advisory_resumes": mResume,
			"unresp_bulk_aqm_drops":   mBulkDrops,
			"unresp_rpc_p99_ms":       burstRound2(mP99.ms),
			"unresp_rpc_goal_ms":      burstRound2(idleP99.ms + 2*target),
			"unresp_rpc_lost":         mLost,
			"unresp_bulk_utilisation": burstRound2(med(mixed, (*burstTrial).utilisation)),
			"unresp_fairness":         burstRound2(med(mixed, (*burstTrial).jain)),

			"aqm_codel_drops": codel, "aqm_overflow_drops": overflow, "aqm_early_drops": early,
			"advisory_suspends": susp, "advisory_resumes": resume, "tx_backpressured": backp,
			"fifo_tail_drops": fifoDrops, "link_mbit_s": burstRate / 1e6, "bulk_flows": burstBulkFlows,
			"bulk_apps": "raw channel senders honouring advisories (netstack TCP: the stack's bench)",
		}
		// A p99 too long to measure is a lower bound (burstP99), and so
		// is a goal made from one.
		if mP99.bound != "" {
			x["unresp_rpc_p99_bound"] = mP99.bound
		}
		if idleP99.bound != "" {
			x["unresp_rpc_goal_bound"] = idleP99.bound
		}
		maps.Copy(x, w.extra)
		return x
	}
	if cfg.wants(w.prefix + burstRowRPC) {
		o, b := burstP99(ours), burstP99(base)
		x := extra()
		x["idle_p99_ms"], x["target_ms"] = burstRound2(idleP99.ms), target
		x["goal_ms"] = burstRound2(idleP99.ms + 2*target) // the row's goal: at most idle p99 + 2 × target
		if idleP99.bound != "" {
			x["idle_p99_bound"], x["goal_bound"] = idleP99.bound, idleP99.bound
		}
		x["round_trips"], x["baseline_round_trips"], x["idle_round_trips"] = oN, bN, iN
		x["lost"], x["baseline_lost"] = oLost, bLost
		r := Latency(w.prefix+burstRowRPC, "ms (p99)", burstRound2(o.ms), o.bound, w.baseName, burstRound2(b.ms), b.bound)
		r.Extra = x
		rep.Results = append(rep.Results, r)
	}
	if cfg.wants(w.prefix + burstRowUtil) {
		o := med(ours, (*burstTrial).utilisation)
		b := med(base, (*burstTrial).utilisation)
		r := Throughput(w.prefix+burstRowUtil, "fraction of the link", o, w.baseName, b)
		r.Extra = extra()
		rep.Results = append(rep.Results, r)
	}
	if cfg.wants(w.prefix + burstRowFair) {
		o := med(ours, (*burstTrial).jain)
		b := med(base, (*burstTrial).jain)
		r := Throughput(w.prefix+burstRowFair, "Jain's index", o, w.baseName, b)
		x := extra()
		x["bulk_bytes_per_flow"] = ours[len(ours)/2].bytes
		r.Extra = x
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

// BurstRPCWait is how long the burst scenario's RPC app waits for an answer
// before it gives the request up as lost.
const BurstRPCWait = burstRPCWait

// BurstDemo runs the burst scenario once, d per trial, for `skylane demo`:
// the same rows and extras (advisory suspends and resumes, AQM drops, the
// FIFO's tail drops) as `skylane bench burst`.
func BurstDemo(d time.Duration) (Report, error) {
	return runBurst(Config{Duration: d, Rounds: 1})
}
