package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// The `tcp --dev` rows: one TCP stream from a kernel client in
// the peer namespace, across a veth pair, into a user-space server (a
// client.Stack on a nexus on AF_XDP) in the local namespace; baseline: the
// same kernel client into a kernel server on the same veth, in the same
// run, alternating.
//
// A second row, tcp/afpacket/mtu=1500, runs the same over AF_PACKET. In
// both rows the peer keeps its offloads (TSO, checksum offload), as in the
// baseline: AF_XDP receives its TSO super packets whole through generic
// XDP with multi-buffer (XDP_USE_SG) and completes their partial
// checksums, AF_PACKET through its virtio-net header.
//
// Register it under the tcp scenario's --dev flag (see the report): with
// Config.Dev set, runTCP returns runTCPDev(cfg).
var tcpDevRows = []struct {
	name   string
	driver string
	// peerOffloads: whether the peer keeps its transmit checksum offload
	// and TSO while it sends to the user-space server.
	peerOffloads bool
	// rpc: the row measures 64-byte request/response latency (p50, p99
	// in the extras) from the kernel client, not a stream.
	rpc bool
}{
	{"tcp/afxdp/mtu=1500", drivers.AFXDP, true, false},
	{"tcp/afpacket/mtu=1500", drivers.AFPacket, true, false},
	{"rpc/afxdp/size=64", drivers.AFXDP, true, true},
	{"rpc/afpacket/size=64", drivers.AFPacket, true, true},
}

const (
	tcpDevBaseName = "kernel TCP server on the same veth (peer with its offloads: TSO, checksum)"
	tcpDevUserPort = 5201
	tcpDevKernPort = 5202
	// tcpDevXDPMode: generic XDP runs in the local veth's receive path,
	// native in the peer's transmit path (veth's NAPI), on the sender's
	// core; on two cores generic leaves the sender its core (as for the
	// udp rows). Generic also keeps the peer's TSO, so super packets
	// arrive whole (multi-buffer); native makes the peer segment in
	// software (measured: 5.5 Gbit/s native, 9.4 generic, same host).
	tcpDevXDPMode = drivers.ModeGeneric
	// tcpDevRing is the AF_XDP ring (and RX UMEM frames): at ~0.45 Mpps
	// the default 2048 frames last 4.5 ms, less than a scheduling hiccup
	// on two shared cores, and the kernel then drops on an empty fill
	// ring (TCP recovers, slowly); 8192 frames absorb 18 ms.
	tcpDevRing = 8192
	// tcpDevFrame is the AF_XDP UMEM frame: a 64 KiB super packet takes 18
	// descriptors of 4 KiB frames instead of 37 of 2 KiB ones (12 against
	// 9.4 Gbit/s, measured on the shared 2-core host).
	tcpDevFrame = 4096
)

// runTCPDev runs the tcp --dev rows. It needs root: it makes two network
// namespaces and a veth pair, removed on every path.
func runTCPDev(cfg Config) (rep Report, err error) {
	rep = Report{Scenario: "tcp", Machine: Machine()}
	wanted := false
	for _, row := range tcpDevRows {
		wanted = wanted || cfg.wants(row.name)
	}
	if !wanted {
		return rep, nil
	}
	if os.Geteuid() != 0 {
		return rep, errors.New("tcp --dev: needs root (network namespaces, AF_XDP, BPF): run skylane bench tcp --dev as root")
	}
	if _, err := exec.LookPath("ethtool"); err != nil {
		return rep, fmt.Errorf("tcp --dev: ethtool is needed to set the peer veth's offloads: %w", err)
	}
	h, err := newUDPHosts() // the same two hosts as the udp rows
	if err != nil {
		return rep, fmt.Errorf("tcp --dev: %w", err)
	}
	defer func() { err = errors.Join(err, h.close()) }()
	kernel, err := h.kernelStream()
	if err != nil {
		return rep, fmt.Errorf("tcp --dev: kernel baseline: %w", err)
	}
	defer kernel.close()
	for _, row := range tcpDevRows {
		if !cfg.wants(row.name) {
			continue
		}
		cfg.progress("tcp --dev %s", row.name)
		var res Result
		if row.rpc {
			res, err = h.devRPCRow(cfg, row.name, row.driver, kernel)
		} else {
			res, err = h.devRow(cfg, row.name, row.driver, row.peerOffloads, kernel)
		}
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, h.peerOffloads(true)
}

// devRow measures one row: rounds of the user-space stream and of the
// kernel baseline, alternating; for a row whose peer sends without
// offloads, also the kernel baseline without them, for comparison.
func (h *udpHosts) devRow(cfg Config, name, driver string, offloads bool, kernel *connPair) (Result, error) {
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	var ours, base, baseNoOffload []float64
	var ocpu, bcpu cpuPerGB
	var figs devFigures
	for i := range rounds {
		if err := cfg.roundStart(name, i, rounds); err != nil {
			return Result{}, err
		}
		r, f, err := h.userStream(driver, offloads, d)
		if err != nil {
			return Result{}, fmt.Errorf("%s: %w", name, err)
		}
		ours = append(ours, r.PerSecond())
		ocpu.add(r.cpu, r.Count)
		figs.add(f)
		variants := []bool{true}
		if !offloads {
			variants = append(variants, false)
		}
		for _, on := range variants {
			if err := h.peerOffloads(on); err != nil {
				return Result{}, err
			}
			if _, err := kernel.stream(tcpWarmup); err != nil {
				return Result{}, fmt.Errorf("%s baseline warm-up: %w", name, err)
			}
			r, err := kernel.stream(d)
			if err != nil {
				return Result{}, fmt.Errorf("%s baseline: %w", name, err)
			}
			if on {
				base = append(base, r.PerSecond())
				bcpu.add(r.cpu, r.Count)
			} else {
				baseNoOffload = append(baseNoOffload, r.PerSecond())
			}
		}
	}
	o, b := median(ours)/1e9, median(base)/1e9
	res := Throughput(name, "Gbit/s", o, tcpDevBaseName, b)
	res.Extra = map[string]any{
		"peer_offloads_ours":      "on",
		"rx_super_packets":        figs.superPackets,
		"rx_super_split":          figs.split,
		"rx_super_split_pieces":   figs.pieces,
		"rx_frames_per_super":     round2(float64(figs.merged+figs.superPackets) / float64(max(figs.superPackets, 1))),
		"switch_tx_drops":         figs.txDrops,
		"server_stack_rx_packets": figs.stackRx,
		"link_rx_drops":           figs.linkDrops,
		"setup_ms_per_round":      figs.setupMs / uint64(rounds),
	}
	cpuExtras(res.Extra, ocpu, bcpu)
	if driver == drivers.AFXDP {
		res.Extra["xdp_mode"] = tcpDevXDPMode
		res.Extra["afxdp_fill_ring_empty"] = figs.fillEmpty
		res.Extra["afxdp_rx_ring_full"] = figs.xdpFull
		res.Extra["afxdp_rx_super_packets"] = figs.xdpSuper
		res.Extra["afxdp_rx_super_split"] = figs.xdpSplit
		res.Extra["afxdp_rx_csum_completed"] = figs.xdpCsum
	}
	if !offloads {
		bn := median(baseNoOffload) / 1e9
		res.Extra["peer_offloads_ours"] = "off (ethtool -K peer tx off: a veth hands XDP partial checksums and TSO super packets, a wire does not)"
		res.Extra["baseline_no_offload_gbps"] = round2(bn)
		res.Extra["ratio_vs_no_offload"] = round2(o / bn)
	}
	return res, nil
}

// devRPCRow measures 64-byte round trips from the kernel client in the
// peer namespace to an echo server on the user-space stack, and to one on
// the kernel's stack of the same veth: rounds alternate, each round builds
// the user-space host afresh (as devRow does), and the p50 and p99 of all
// rounds' round trips are reported; and, in the same rounds, the
// user-space host with busy-poll (the app and the nexus spinning
// rpcBusyPoll), in the extras.
func (h *udpHosts) devRPCRow(cfg Config, name, driver string, kernel *connPair) (Result, error) {
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	if err := h.peerOffloads(true); err != nil {
		return Result{}, err
	}
	var ours, busy, base rpcRounds
	for i := range rounds {
		if err := cfg.roundStart(name, i, rounds); err != nil {
			return Result{}, err
		}
		if err := h.userRPC(driver, 0, d, &ours); err != nil {
			return Result{}, fmt.Errorf("%s: %w", name, err)
		}
		if _, err := kernel.rpc(tcpWarmup); err != nil {
			return Result{}, fmt.Errorf("%s baseline warm-up: %w", name, err)
		}
		if err := base.measure(kernel, d); err != nil {
			return Result{}, fmt.Errorf("%s baseline: %w", name, err)
		}
		if err := h.userRPC(driver, rpcBusyPoll, d, &busy); err != nil {
			return Result{}, fmt.Errorf("%s busy-poll: %w", name, err)
		}
	}
	r := latencyRow(name, tcpDevBaseName, ours, base)
	busy.busyExtras(r.Extra, rpcBusyPoll)
	return r, nil
}

// userRPC builds the user-space server (its app and nexus spinning
// busyPoll before they sleep), runs round trips from the kernel client for
// d after a warm-up into into, and closes it all again.
func (h *udpHosts) userRPC(driver string, busyPoll, d time.Duration, into *rpcRounds) error {
	u, err := h.openUserStack(driver, "tcpdev-rpc", busyPoll)
	if err != nil {
		return err
	}
	defer u.close()
	p, err := h.connectUser(u)
	if err != nil {
		return err
	}
	defer p.close()
	if _, err := p.rpc(tcpWarmup); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return into.measure(p, d)
}

// devFigures are the user-space path's counters, summed over the rounds.
type devFigures struct {
	superPackets, merged uint64
	split, pieces        uint64 // super packets the switch read whole and cut to the app's buffers, and the pieces
	fillEmpty, xdpFull   uint64 // AF_XDP: the kernel's drops for an empty fill ring, a full RX ring
	xdpSuper, xdpSplit   uint64 // AF_XDP: super packets received (multi-buffer), of which split for short buffers
	xdpCsum              uint64 // AF_XDP: partial checksums completed
	linkDrops            uint64 // the link's RxDrops
	txDrops              uint64
	stackRx              uint64
	setupMs              uint64
}

func (f *devFigures) add(g devFigures) {
	f.superPackets += g.superPackets
	f.merged += g.merged
	f.split += g.split
	f.pieces += g.pieces
	f.fillEmpty += g.fillEmpty
	f.xdpFull += g.xdpFull
	f.xdpSuper += g.xdpSuper
	f.xdpSplit += g.xdpSplit
	f.xdpCsum += g.xdpCsum
	f.linkDrops += g.linkDrops
	f.txDrops += g.txDrops
	f.stackRx += g.stackRx
	f.setupMs += g.setupMs
}

// peerOffloads turns the peer veth's transmit checksum offload (and with
// it TSO, which needs it) on or off. Off, the peer sends what a wire
// carries: MTU-sized frames with complete checksums. On, a veth passes
// CHECKSUM_PARTIAL super packets to the other end, which the kernel's
// stack takes on trust and which the drivers complete. Every row runs with
// them on; a row with them off also measures the baseline without.
func (h *udpHosts) peerOffloads(on bool) error {
	v := "off"
	if on {
		v = "on"
	}
	out, err := exec.Command("ip", "netns", "exec", h.peerNS, "ethtool", "-K", h.peerIf, "tx", v).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tcp --dev: ethtool -K %s tx %s: %w: %s", h.peerIf, v, err, out)
	}
	return nil
}

// kernelStream connects the kernel client in the peer namespace to a
// kernel server in the local one, on the veth.
func (h *udpHosts) kernelStream() (*connPair, error) {
	ln, err := h.kernelListen(tcpDevKernPort)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	p := &connPair{}
	if err := p.connect(ln, h.peerDial(tcpDevKernPort)); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// kernelListen listens on the kernel's stack of the local namespace, on
// the veth's address.
func (h *udpHosts) kernelListen(port uint16) (ln net.Listener, err error) {
	err = inNS(h.local, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(udpLocal, port).String())
		return err
	})
	return ln, err
}

// peerDial returns a dialer that connects from the peer namespace (the
// socket stays there, and is used from any goroutine).
func (h *udpHosts) peerDial(port uint16) func() (net.Conn, error) {
	return func() (c net.Conn, err error) {
		err = inNS(h.peer, func() (err error) {
			c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(udpLocal, port).String(), 10*time.Second)
			return err
		})
		return c, err
	}
}

// userStack is the user-space host of a --dev row on the local veth: the
// driver's link, a nexus on it and a client stack. close releases them all,
// so that the baseline runs on a veth with no program attached (generic
// XDP would otherwise linearize the baseline's super packets).
type userStack struct {
	link netif.Link
	nx   *nexus.Nexus
	st   *client.Stack
}

// openUserStack builds a userStack on driver, in the local namespace, its
// nexus and app spinning busyPoll before they sleep (0: not at all).
func (h *udpHosts) openUserStack(driver, name string, busyPoll time.Duration) (*userStack, error) {
	spec := drivers.Spec{Driver: driver, Dev: h.localIf}
	if driver == drivers.AFXDP {
		spec.Mode, spec.RingSize, spec.FrameSize = tcpDevXDPMode, tcpDevRing, tcpDevFrame
	}
	u := &userStack{}
	err := inNS(h.local, func() (err error) {
		u.link, err = drivers.Open(spec)
		return err
	})
	if err != nil {
		return nil, err
	}
	u.nx, err = nexus.New(nexus.Options{Link: u.link, Addrs: []netip.Addr{udpLocal}, BusyPoll: busyPoll,
		Switch: flowswitch.Options{SrcMAC: [6]byte(h.localMAC), DstMAC: [6]byte(h.peerMAC)}})
	if err != nil {
		u.link.Close()
		return nil, err
	}
	// No checksum offload here: on a real device the nexus would complete
	// every checksum in software on its one worker, which measured
	// slower (tcp/afxdp 0.24-0.28 against 0.37-0.44 with the app's stack
	// computing them, 2026-12-08); the offload pays on a trusted wire.
	if u.st, err = client.New(inproc.Nexus(u.nx), client.Options{Name: name, BusyPoll: busyPoll}); err != nil {
		u.nx.Close()
		return nil, err
	}
	return u, nil
}

func (u *userStack) close() {
	u.st.Close()
	u.nx.Close() // closes the link
}

// connectUser connects a kernel client in the peer namespace to the
// user-space stack u (a stream and an RPC connection).
func (h *udpHosts) connectUser(u *userStack) (*connPair, error) {
	ln, err := u.st.Listen("tcp4", ":"+strconv.Itoa(tcpDevUserPort))
	if err != nil {
		return nil, err
	}
	p := &connPair{}
	err = p.connect(ln, h.peerDial(tcpDevUserPort))
	ln.Close()
	if err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// userStream builds the user-space server, connects the kernel client to
// it, streams for d after a warm-up, and closes it all again.
func (h *udpHosts) userStream(driver string, offloads bool, d time.Duration) (Rate, devFigures, error) {
	var f devFigures
	t0 := time.Now()
	if err := h.peerOffloads(offloads); err != nil {
		return Rate{}, f, err
	}
	u, err := h.openUserStack(driver, "tcpdev", 0)
	if err != nil {
		return Rate{}, f, err
	}
	defer u.close()
	nx, link, st := u.nx, u.link, u.st
	p, err := h.connectUser(u)
	if err != nil {
		return Rate{}, f, err
	}
	defer p.close()
	if _, err := p.stream(tcpWarmup); err != nil {
		return Rate{}, f, fmt.Errorf("warm-up: %w", err)
	}
	f.setupMs = uint64(time.Since(t0).Milliseconds())
	s0, err := nx.Stats()
	if err != nil {
		return Rate{}, f, err
	}
	var x0, x1 afxdp.Stats
	xl, isXDP := link.(afxdp.Link)
	if isXDP {
		x0 = xl.XDPStats()
	}
	l0 := link.Stats()
	rx0 := st.Endpoint().Stats().RxPackets
	r, err := p.stream(d)
	if err != nil {
		return Rate{}, f, err
	}
	s1, err := nx.Stats()
	if err != nil {
		return Rate{}, f, err
	}
	if isXDP {
		x1 = xl.XDPStats()
	}
	f.superPackets = s1.Switch.SuperPackets - s0.Switch.SuperPackets
	f.merged = s1.Switch.Merged - s0.Switch.Merged
	f.split = s1.Switch.Split - s0.Switch.Split
	f.pieces = s1.Switch.SplitPieces - s0.Switch.SplitPieces
	f.fillEmpty = x1.KernelFillEmpty - x0.KernelFillEmpty
	f.xdpFull = x1.KernelRxFull - x0.KernelRxFull
	f.xdpSuper = x1.RxSuperPackets - x0.RxSuperPackets
	f.xdpSplit = x1.RxSuperSplit - x0.RxSuperSplit
	f.xdpCsum = x1.RxCsumCompleted - x0.RxCsumCompleted
	f.linkDrops = link.Stats().RxDrops - l0.RxDrops
	f.txDrops = s1.Switch.TxDrops.Total() - s0.Switch.TxDrops.Total()
	f.stackRx = st.Endpoint().Stats().RxPackets - rx0
	return r, f, nil
}
