package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/syscalls"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/regulate"
)

// The burst scenario on a veth pair (`skylane bench burst --dev`):
// the same trials and rows as on memif (burst.go), prefixed
// "veth/" ("veth/afxdp/" with Config.Driver afxdp), between two network
// namespaces the bench makes (udpHosts, as the udp and tcp --dev rows).
//
//   - Local namespace: the switch on the local veth through a kernel driver
//     (AF_PACKET by default, with its TC steering program; AF_XDP in
//     generic mode with Driver afxdp), its static next hop the peer veth's
//     MAC; the apps (eight bulk, one RPC, the unresponsive one in its
//     trial) on its channels, as on memif. Their flows are steered to the
//     switch, so the local kernel (which owns the address, for ARP) never
//     sees the RPC's answers.
//   - Peer namespace: the kernel's own stack is the far end: a UDP socket
//     on burstBulkPort counts each bulk flow's bytes (by source port, as
//     frame bytes: payload + 42), one on burstBlastPort counts the
//     unresponsive app's datagrams, and a UDP echo on burstRPCPort answers
//     each request. A datagram the kernel drops (bad checksum, full socket
//     buffer) is not counted.
//
// The rate and the queue. A veth has no rate of its own (it moves
// gigabits), so the bottleneck is made at the nexus's transmit queue, at
// burstRate (100 Mbit/s of frame bytes), in both trials:
//
//   - regulated: the switch's AQM (2048 packets) paced at burstRate by the
//     switch's own pacer (Options.LinkRate), as on memif;
//   - FIFO: regulation off, and between the switch's transmit checks and
//     the device a plain FIFO of 2048 frames with tail drop (burstFIFO,
//     the switch's Options.TxQueue) drained at burstRate by a token bucket
//     as deep as the switch's pacer (flowswitch.DefaultLinkBurstTime at the
//     rate, at least DefaultLinkBurstFrames frames). On memif the wire's
//     own 2048-frame queue, drained at the same rate, plays that part.
//
// So both trials have the same rate, the same queue length and the same
// place for the queue; only its discipline differs. The veth and the
// peer's kernel only carry what the queue lets go. (A tbf qdisc on the
// veth would not do for the FIFO: AF_XDP bypasses the qdisc, and AF_PACKET's
// transmit ring holds a slot per frame queued in it, 1024 by default, fewer
// than 2048.) The FIFO's drops (fifo_tail_drops) are the burstFIFO's tail
// drops plus any the device refused.
const (
	burstVethBaseName = "plain FIFO transmit queue of 2048 frames paced at 100 Mbit/s (regulation off)"
	burstUDPOverhead  = burstEthLen + 20 + 8 // frame bytes of a datagram beyond its payload
	burstPeerRcvBuf   = 8 << 20              // the kernel peer's socket buffers: a descheduled reader loses nothing
)

// burstVethPrefix is the veth rows' prefix for driver.
func burstVethPrefix(driver string) string {
	if driver == drivers.AFPacket {
		return "veth/"
	}
	return "veth/" + driver + "/"
}

// runBurstDev runs the burst rows on a veth pair. It needs root: it makes
// two network namespaces and a veth pair, removed on every path.
func runBurstDev(cfg Config) (rep Report, err error) {
	rep = Report{Scenario: burstScenario, Machine: Machine()}
	driver := cfg.Driver
	if driver == "" {
		driver = drivers.AFPacket
	}
	if driver != drivers.AFPacket && driver != drivers.AFXDP {
		return rep, fmt.Errorf("burst --dev: driver %q: use %s or %s", driver, drivers.AFPacket, drivers.AFXDP)
	}
	if !burstWanted(cfg, &burstWire{prefix: burstVethPrefix(driver)}) {
		return rep, nil
	}
	if os.Geteuid() != 0 {
		return rep, errors.New("burst --dev: needs root (network namespaces, AF_PACKET, BPF): run skylane bench burst --dev as root")
	}
	h, err := newUDPHosts()
	if err != nil {
		return rep, fmt.Errorf("burst --dev: %w", err)
	}
	defer func() { err = errors.Join(err, h.close()) }()
	w := h.burstWire(driver)
	return runBurstOn(cfg, &w)
}

// burstWire is the veth pair as the burst scenario's wire, the switch on
// driver.
func (h *udpHosts) burstWire(driver string) burstWire {
	spec := drivers.Spec{Driver: driver, Dev: h.localIf}
	x := map[string]any{
		"driver": driver,
		"wire":   "veth pair; far end the kernel's stack in the peer namespace (UDP sink per flow, UDP echo)",
		"fifo":   "baseline queue: a 2048-frame tail-drop FIFO between the switch and the device, drained at 100 Mbit/s (token bucket as deep as the switch's pacer)",
	}
	if driver == drivers.AFXDP {
		spec.Mode = tcpDevXDPMode
		x["xdp_mode"] = tcpDevXDPMode
	}
	return burstWire{prefix: burstVethPrefix(driver), baseName: burstVethBaseName, remote: udpPeer,
		srcMAC: [6]byte(h.localMAC), dstMAC: [6]byte(h.peerMAC), paceFIFO: true, extra: x,
		open: func() (netif.Link, netif.Link, *burstKernelPeer, error) {
			var l netif.Link
			err := inNS(h.local, func() (err error) {
				l, err = drivers.Open(spec)
				return err
			})
			if err != nil {
				return nil, nil, nil, fmt.Errorf("burst --dev: %w", err)
			}
			k, err := h.newBurstKernelPeer()
			if err != nil {
				l.Close()
				return nil, nil, nil, err
			}
			return l, nil, k, nil
		}}
}

// burstKernelPeer is the far end on a veth: the peer namespace's kernel
// UDP sockets (see the doc above). The rig's goroutines read them; close
// unblocks them.
type burstKernelPeer struct {
	sink, blast, echo *net.UDPConn
	once              sync.Once
}

func (h *udpHosts) newBurstKernelPeer() (*burstKernelPeer, error) {
	k := &burstKernelPeer{}
	err := inNS(h.peer, func() error {
		for _, s := range []struct {
			c    **net.UDPConn
			port uint16
		}{{&k.sink, burstBulkPort}, {&k.blast, burstBlastPort}, {&k.echo, burstRPCPort}} {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(udpPeer, s.port)))
			if err != nil {
				return err
			}
			*s.c = c
			if err := syscalls.ForceRcvBuf(c, burstPeerRcvBuf); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		k.close()
		return nil, fmt.Errorf("burst --dev: kernel peer: %w", err)
	}
	return k, nil
}

// start runs the peer's readers as r's goroutines.
func (k *burstKernelPeer) start(r *burstRig) {
	buf := func() []byte { return make([]byte, 2048) }
	r.goRun(func() error {
		return k.serve(r, k.sink, buf(), func(n int, from netip.AddrPort) error {
			if p := from.Port(); p >= burstBulkLocal && p < burstBulkLocal+burstBulkFlows {
				r.bulkBytes[p-burstBulkLocal].Add(uint64(n + burstUDPOverhead))
			}
			return nil
		})
	})
	r.goRun(func() error {
		return k.serve(r, k.blast, buf(), func(int, netip.AddrPort) error {
			r.blastRecv.Add(1)
			return nil
		})
	})
	b := buf()
	r.goRun(func() error {
		return k.serve(r, k.echo, b, func(n int, from netip.AddrPort) error {
			_, err := k.echo.WriteToUDPAddrPort(b[:n], from)
			return err
		})
	})
}

// serve reads datagrams from c into buf and hands each to f until the rig
// stops (and close closes c).
func (k *burstKernelPeer) serve(r *burstRig, c *net.UDPConn, buf []byte, f func(n int, from netip.AddrPort) error) error {
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err == nil {
			err = f(n, from)
		}
		if err != nil {
			if r.stopped() && errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("burst kernel peer %v: %w", c.LocalAddr(), err)
		}
	}
}

// close closes the sockets (once).
func (k *burstKernelPeer) close() {
	k.once.Do(func() {
		for _, c := range []*net.UDPConn{k.sink, k.blast, k.echo} {
			if c != nil {
				c.Close()
			}
		}
	})
}

// burstFIFO is the FIFO trial's transmit queue on a device with no rate of
// its own (see the doc above): burstQueue frames, tail drop, drained at
// burstRate. It is the switch's TxQueue: only the nexus's worker calls
// it, and its counters are read after the nexus closed.
type burstFIFO struct {
	link    netif.Link
	slots   [][]byte // a ring: slots[head] is the oldest of n frames
	head, n int
	bucket  regulate.TokenBucket
	t0      time.Time
	out     [][]byte // Flush's batch
	drops   uint64   // tail drops
	sent    uint64   // frames the device took
}

func newBurstFIFO(link netif.Link) (*burstFIFO, error) {
	frameLen := netif.MaxFrameLen(link.MTU(), link.LinkType())
	depth := max(int64(burstRate/8*flowswitch.DefaultLinkBurstTime.Seconds()), int64(flowswitch.DefaultLinkBurstFrames*frameLen))
	b, err := regulate.NewTokenBucket(burstRate/8, depth, 0)
	if err != nil {
		return nil, fmt.Errorf("burst fifo: %w", err)
	}
	f := &burstFIFO{link: link, slots: make([][]byte, burstQueue), bucket: b, t0: time.Now(),
		out: make([][]byte, 0, flowswitch.TxBatch)}
	mem := make([]byte, burstQueue*frameLen)
	for i := range f.slots {
		f.slots[i] = mem[i*frameLen : i*frameLen : (i+1)*frameLen]
	}
	return f, nil
}

// Enqueue implements flowswitch.TxQueue: it copies the frames in while
// there is room and tail-drops the rest.
func (f *burstFIFO) Enqueue(frames [][]byte, _, _ []uint32) int {
	for i, fr := range frames {
		if f.n == len(f.slots) {
			f.drops += uint64(len(frames) - i)
			return i
		}
		j := (f.head + f.n) % len(f.slots)
		f.slots[j] = append(f.slots[j][:0], fr...)
		f.n++
	}
	return len(frames)
}

// Flush implements flowswitch.TxQueue: it writes the oldest frames the
// bucket has credit for. Frames the device refuses are its drops (counted
// in its Stats), not retried: a plain FIFO's head is gone once handed on.
func (f *burstFIFO) Flush() error {
	now := int64(time.Since(f.t0))
	for f.n > 0 {
		out := f.out[:0]
		for len(out) < f.n && len(out) < cap(out) {
			fr := f.slots[(f.head+len(out))%len(f.slots)]
			if !f.bucket.Allow(len(fr), now) {
				break
			}
			out = append(out, fr)
		}
		if len(out) == 0 {
			return nil
		}
		k, err := f.link.Write(out)
		f.head = (f.head + len(out)) % len(f.slots)
		f.n -= len(out)
		f.sent += uint64(k)
		if err != nil {
			return fmt.Errorf("burst fifo: write: %w", err)
		}
	}
	return nil
}

var _ flowswitch.TxQueue = (*burstFIFO)(nil)
