package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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
