package bench

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/skylane/skylane/internal/syscalls"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

// The udp scenario: 64-byte UDP frames from an AF_XDP batch
// sender in a peer namespace, across a veth pair, into a user-space
// consumer in the local namespace; baseline: a kernel UDP socket on the
// same veth reading with recvmmsg, in the same run. The sender is the same
// for both, and its rate is reported beside each figure.
var udpRows = []struct {
	name   string
	driver string
	size   int
}{
	{"udp-rx/afxdp/size=64", "afxdp", 64},
	{"udp-rx/afpacket/size=64", "afpacket", 64},
}

const (
	udpBaseName = "kernel UDP socket, recvmmsg"
	udpBatch    = 64  // frames per Read / recvmmsg
	udpTxBatch  = 256 // frames per sender Write: one sendto each
	udpPort     = 9000
	udpSrcPort  = 5000
	// udpXDPMode is the consumer's XDP mode. Generic runs in the receive
	// path after RPS, on the consumer's core; native runs in veth's NAPI,
	// on the sender's core, making the sender the bottleneck (0.4-0.5
	// against 0.8-0.9 Mpps generic on the 2-core machine).
	udpXDPMode = steer.XDPGeneric
	// udpRing is the AF_XDP consumer's ring (and RX UMEM frames): 8192
	// frames absorb 8 ms at 1 Mpps, a scheduler time slice or two in
	// which the consumer is not running, as AF_PACKET's 4 MiB of blocks do.
	udpRing = 8192
	// udpWarmup bounds the wait for the first frame of a round: the
	// consumer must see traffic before the clock starts.
	udpWarmup = 3 * time.Second
)

var (
	udpLocal = netip.MustParseAddr("198.18.0.1") // RFC 2544 benchmarking range
	udpPeer  = netip.MustParseAddr("198.18.0.2")
)

// runUDP runs the udp scenario. It needs root: it makes two network
// namespaces and a veth pair, removed on every path.
func runUDP(cfg Config) (rep Report, err error) {
	rep = Report{Scenario: "udp", Machine: Machine()}
	if os.Geteuid() != 0 {
		return rep, errors.New("udp: needs root (network namespaces, AF_XDP, BPF): run skylane bench udp as root")
	}
	h, err := newUDPHosts()
	if err != nil {
		return rep, err
	}
	defer func() { err = errors.Join(err, h.close()) }()

	snd, err := h.newSender(64)
	if err != nil {
		return rep, err
	}
	defer snd.l.Close()

	for _, row := range udpRows {
		if !cfg.wants(row.name) {
			continue
		}
		cfg.progress("udp %s", row.name)
		var oursSnd, baseSnd, oursGot, baseGot []float64
		var oursDrops uint64
		ours := func(d time.Duration) (Rate, error) {
			r, s, drops, err := h.measureUser(row.driver, snd, d)
			oursSnd, oursGot = append(oursSnd, s), append(oursGot, r.PerSecond()/max(s, 1))
			oursDrops += drops
			return r, err
		}
		base := func(d time.Duration) (Rate, error) {
			r, s, err := h.measureKernel(snd, d)
			baseSnd, baseGot = append(baseSnd, s), append(baseGot, r.PerSecond()/max(s, 1))
			return r, err
		}
		o, b, err := Measure(cfg, row.name, ours, base)
		if err != nil {
			return rep, err
		}
		r := Throughput(row.name, "Mpps", o/1e6, udpBaseName, b/1e6)
		r.Extra = map[string]any{
			"sender":            "AF_XDP copy-mode TX in the peer namespace, 256-frame batches",
			"sender_mpps_ours":  round2(median(oursSnd) / 1e6),
			"sender_mpps_base":  round2(median(baseSnd) / 1e6),
			"consumer_rx_drops": oursDrops,
			// The share of the sender's frames each consumer got: what
			// the receiving core could not keep up with was dropped.
			"delivered_ours": round2(median(oursGot)),
			"delivered_base": round2(median(baseGot)),
		}
		if row.driver == "afxdp" {
			r.Extra["xdp_mode"] = udpXDPMode.String()
		}
		if runtime.NumCPU() >= 2 {
			r.Extra["cpus"] = fmt.Sprintf("sender pinned to CPU %d, receive processing (RPS) on CPU %d, consumer unpinned", senderCPU, receiverCPU)
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

// udpHosts is the veth pair between two namespaces the scenario makes.
type udpHosts struct {
	local, peer       netns.NsHandle
	localNS, peerNS   string
	localIf, peerIf   string
	localMAC, peerMAC net.HardwareAddr
}

func newUDPHosts() (_ *udpHosts, err error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(rnd[:])
	h := &udpHosts{localNS: "skyb-l" + id, peerNS: "skyb-p" + id, localIf: "sbl" + id, peerIf: "sbp" + id,
		local: -1, peer: -1}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.close())
		}
	}()
	if h.local, err = newNamedNS(h.localNS); err != nil {
		return h, err
	}
	if h.peer, err = newNamedNS(h.peerNS); err != nil {
		return h, err
	}
	nl, err := netlink.NewHandleAt(h.local)
	if err != nil {
		return h, fmt.Errorf("udp: netlink in %s: %w", h.localNS, err)
	}
	defer nl.Close()
	pl, err := netlink.NewHandleAt(h.peer)
	if err != nil {
		return h, fmt.Errorf("udp: netlink in %s: %w", h.peerNS, err)
	}
	defer pl.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = h.localIf
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: h.peerIf, PeerNamespace: netlink.NsFd(int(h.peer))}); err != nil {
		return h, fmt.Errorf("udp: add veth: %w", err)
	}
	for _, e := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Addr
		mac  *net.HardwareAddr
	}{{nl, h.localIf, udpLocal, &h.localMAC}, {pl, h.peerIf, udpPeer, &h.peerMAC}} {
		l, err := e.h.LinkByName(e.name)
		if err != nil {
			return h, fmt.Errorf("udp: find %s: %w", e.name, err)
		}
		*e.mac = l.Attrs().HardwareAddr
		if err := e.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: e.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return h, fmt.Errorf("udp: address %s: %w", e.name, err)
		}
		if err := e.h.LinkSetUp(l); err != nil {
			return h, fmt.Errorf("udp: set %s up: %w", e.name, err)
		}
		lo, err := e.h.LinkByName("lo")
		if err == nil {
			err = e.h.LinkSetUp(lo)
		}
		if err != nil {
			return h, fmt.Errorf("udp: loopback: %w", err)
		}
	}
	if runtime.NumCPU() >= 2 {
		if err := h.setRPS(1 << receiverCPU); err != nil {
			return h, err
		}
	}
	return h, nil
}

// setRPS steers the local veth's receive processing to the CPUs of mask
// (receive packet steering): sysfs shows a device only to a process in
// its namespace, hence ip netns exec.
func (h *udpHosts) setRPS(mask int) error {
	path := fmt.Sprintf("/sys/class/net/%s/queues/rx-0/rps_cpus", h.localIf)
	out, err := exec.Command("ip", "netns", "exec", h.localNS, "sh", "-c",
		fmt.Sprintf("echo %x > %s", mask, path)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("udp: set RPS on %s: %w: %s", h.localIf, err, out)
	}
	return nil
}

// newNamedNS creates a named namespace without moving this goroutine's
// thread into it for longer than the call.
func newNamedNS(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("udp: current namespace: %w", err)
	}
	defer orig.Close()
	h, nerr := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		if nerr == nil {
			h.Close()
			_ = netns.DeleteNamed(name)
		}
		return -1, fmt.Errorf("udp: restore namespace: %w", serr) // thread stays locked: the runtime retires it
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		return -1, fmt.Errorf("udp: create namespace %s: %w", name, nerr)
	}
	return h, nil
}

// inNS runs f on a locked thread inside ns.
func inNS(ns netns.NsHandle, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("udp: enter namespace: %w", err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("udp: leave namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// close removes the namespaces (and with them the veth pair).
func (h *udpHosts) close() error {
	var errs []error
	for _, ns := range []struct {
		h    *netns.NsHandle
		name string
	}{{&h.local, h.localNS}, {&h.peer, h.peerNS}} {
		if *ns.h < 0 {
			continue
		}
		ns.h.Close()
		*ns.h = -1
		if err := netns.DeleteNamed(ns.name); err != nil {
			errs = append(errs, fmt.Errorf("udp: remove namespace %s: %w", ns.name, err))
		}
	}
	return errors.Join(errs...)
}

// udpSender pumps one prebuilt frame, udpTxBatch at a time, through an
// AF_XDP link on the peer end until stopped.
type udpSender struct {
	l      afxdp.Link
	frames [][]byte
	sent   atomic.Uint64
}

func (h *udpHosts) newSender(size int) (*udpSender, error) {
	f, err := udpFrame(h.peerMAC, h.localMAC, netip.AddrPortFrom(udpPeer, udpSrcPort), netip.AddrPortFrom(udpLocal, udpPort), size)
	if err != nil {
		return nil, err
	}
	s := &udpSender{frames: make([][]byte, udpTxBatch)}
	for i := range s.frames {
		s.frames[i] = f
	}
	err = inNS(h.peer, func() (err error) {
		s.l, err = afxdp.Open(afxdp.Options{Interface: h.peerIf, Mode: steer.XDPNative})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("udp: sender: %w", err)
	}
	return s, nil
}

// start runs the sender until the returned stop is called; stop waits for
// it to end.
func (s *udpSender) start() (stop func()) {
	var quit atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // one busy thread per side
		defer runtime.UnlockOSThread()
		defer pinCPU(senderCPU)()
		for !quit.Load() {
			n, _ := s.l.Write(s.frames)
			s.sent.Add(uint64(n))
			if n == 0 {
				runtime.Gosched()
			}
		}
	}()
	return func() { quit.Store(true); <-done }
}

// CPU placement. The sender's thread is pinned to one core; the local
// veth's receive processing (RPS) goes to the other, so the kernel work of
// receiving (generic XDP and the copy into the UMEM, or IP, UDP and the
// socket queue; AF_PACKET's tap) is not paid by the sender, which would
// make it the bottleneck of both paths. The consumer is left to the
// scheduler: pinned to the receive core, it starves under the softirq
// load (the kernel socket's then falls to near zero, a livelock, not a
// capacity); free, it runs where there is room, as an application would.
const (
	senderCPU   = 0
	receiverCPU = 1
)

// pinCPU binds the calling thread, which must be locked, to cpu when the
// machine has more than one, and returns what restores its affinity.
func pinCPU(cpu int) (undo func()) {
	return syscalls.PinCPU(cpu) // best effort: an unpinned run is only noisier
}

// udpFrame builds an Ethernet/IPv4/UDP frame of size bytes, checksums
// included.
func udpFrame(src, dst net.HardwareAddr, from, to netip.AddrPort, size int) ([]byte, error) {
	const hdrs = 14 + 20 + 8
	if size < hdrs+8 {
		return nil, fmt.Errorf("udp: frame size %d below %d", size, hdrs+8)
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
		SrcIP: from.Addr().AsSlice(), DstIP: to.Addr().AsSlice()}
	u := &layers.UDP{SrcPort: layers.UDPPort(from.Port()), DstPort: layers.UDPPort(to.Port())}
	u.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}, ip, u,
		gopacket.Payload(make([]byte, size-hdrs)))
	return buf.Bytes(), err
}

// isOurs reports whether frame b is the sender's: IPv4 UDP to udpPort
// (AF_PACKET also taps the kernel's own chatter).
func isOurs(b []byte) bool {
	return len(b) >= 38 && b[12] == 0x08 && b[13] == 0x00 && b[23] == packet.ProtoUDP &&
		binary.BigEndian.Uint16(b[36:]) == udpPort
}

// measureUser opens the user-space consumer of driver in the local
// namespace, steers the flow to it, runs the sender and counts frames for
// d. It returns the consumer's rate, the sender's rate, and the frames the
// consumer's device dropped.
func (h *udpHosts) measureUser(driver string, snd *udpSender, d time.Duration) (Rate, float64, uint64, error) {
	key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(udpLocal, udpPort), netip.AddrPort{})
	var l netif.Link
	var cleanup []func() error
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			_ = cleanup[i]()
		}
	}()
	err := inNS(h.local, func() error {
		switch driver {
		case "afxdp":
			x, err := afxdp.Open(afxdp.Options{Interface: h.localIf, Mode: udpXDPMode, RingSize: udpRing})
			if err != nil {
				return err
			}
			cleanup = append(cleanup, x.Close)
			l = x
			return x.SteerFlow(key)
		case "afpacket":
			p, err := afpacket.New(afpacket.Options{Interface: h.localIf})
			if err != nil {
				return err
			}
			cleanup = append(cleanup, p.Close)
			l = p
			// The kernel must not also process the flow: the TC
			// program drops it after the AF_PACKET tap.
			flows, err := steer.NewFlows(steer.Options{})
			if err != nil {
				return err
			}
			cleanup = append(cleanup, flows.Close)
			if err := flows.Add(key); err != nil {
				return err
			}
			tc, err := steer.AttachTC(flows, p.Index())
			if err != nil {
				return err
			}
			cleanup = append(cleanup, tc.Close)
			return nil
		}
		return fmt.Errorf("unknown driver %q", driver)
	})
	if err != nil {
		return Rate{}, 0, 0, fmt.Errorf("%s consumer: %w", driver, err)
	}
	bufs := make([][]byte, udpBatch)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(l.MTU(), l.LinkType()))
	}
	sizes := make([]int, udpBatch)
	read := func() (int, error) {
		if err := l.Wait(10 * time.Millisecond); err != nil {
			return 0, err
		}
		n, err := l.Read(bufs, sizes)
		ours := 0
		for i := range n {
			if isOurs(bufs[i][:sizes[i]]) {
				ours++
			}
		}
		return ours, err
	}
	drops0 := l.Stats().RxDrops
	r, s, err := consume(snd, d, read)
	return r, s, l.Stats().RxDrops - drops0, err
}

// measureKernel counts what a kernel UDP socket in the local namespace
// receives with recvmmsg for d.
func (h *udpHosts) measureKernel(snd *udpSender, d time.Duration) (Rate, float64, error) {
	// A deep buffer gives the kernel its best case; a timeout keeps the
	// loop checking the clock.
	var sock *syscalls.UDPBatch
	err := inNS(h.local, func() (err error) {
		sock, err = syscalls.ListenUDPBatch(netip.AddrPortFrom(udpLocal, udpPort), udpBatch, 2048, 8<<20, 10*time.Millisecond)
		return err
	})
	if err != nil {
		return Rate{}, 0, fmt.Errorf("kernel socket: %w", err)
	}
	defer sock.Close()
	return consume(snd, d, sock.Recv)
}

// consume starts the sender, waits for the first frames, then counts what
// read returns for d, and the sender's frames over the same time.
func consume(snd *udpSender, d time.Duration, read func() (int, error)) (Rate, float64, error) {
	stop := snd.start()
	defer stop()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	deadline := time.Now().Add(udpWarmup)
	for {
		n, err := read()
		if err != nil {
			return Rate{}, 0, err
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			return Rate{}, 0, fmt.Errorf("no frame arrived in %v (sender wrote %d)", udpWarmup, snd.sent.Load())
		}
	}
	start, sent0 := time.Now(), snd.sent.Load()
	var got uint64
	for {
		n, err := read()
		if err != nil {
			return Rate{}, 0, err
		}
		got += uint64(n)
		if el := time.Since(start); el >= d {
			s := float64(snd.sent.Load()-sent0) / el.Seconds()
			return Rate{Count: float64(got), Elapsed: el}, s, nil
		}
	}
}
