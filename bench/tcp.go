package bench

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/stack"
)

// The tcp scenario's rows. Register the scenario in Scenarios as
//
//	{Name: "tcp", Help: "one TCP stream and 64-byte RPCs between two user-space stacks through the flowswitch over memif; baselines gVisor's link/pipe and kernel loopback", Run: runTCP},
const (
	tcpRowFsw       = "fsw/mtu=1500"
	tcpRowFswKernel = "fsw-vs-kernel/mtu=1500"
	tcpRowRPC       = "rpc/size=64"
	// tcpRowFswCut is the fsw-vs-kernel stream on a wire without super
	// packets: the sending nexus cuts netstack's super packets into MTU
	// segments (netif/gso), the receiving one merges them again.
	tcpRowFswCut = "fsw-cut-vs-kernel/mtu=1500"

	tcpMTU     = 1500      // the wire MTU of every user-space path
	tcpWrite   = 256 << 10 // bytes per Write of the stream's sender
	rpcSize    = 64        // bytes per request and per response
	tcpWarmup  = 300 * time.Millisecond
	idleConns  = 500 // connections IdleConnRSS opens: within a port's 512 flows
	tcpPortNum = 5001
	// tcpWireQueue is the memif queue per direction: 4096 frames (6 MB)
	// hold a full TCP window at these rates. With memif's default 1024 the
	// sender outruns the receiving nexus in bursts, the wire tail-drops and
	// TCP's loss recovery makes the figure swing by 2× (the flowswitch's
	// AQM, docs/design.md §7, is what will regulate this).
	tcpWireQueue = 4096
	// tcpSuperLen is the longest super packet the rows' wire carries
	// whole (memif MaxSuperPacketLen): a channel buffer's worth, what a
	// stack's super packet fills. The wire's MTU stays 1500: a super
	// packet stands for MTU segments, as on a GSO-capable veth.
	tcpSuperLen = pool.MaxBufferSize + netif.EthernetHeaderLen
	// tcpSuperQueue is that wire's queue: 512 slots of 16 KiB (8 MiB per
	// direction) hold a full TCP window.
	tcpSuperQueue = 512
)

// rpcBusyPoll is the spin budget of the rpc rows' busy-poll variant (the
// apps' and the nexuses'): longer than a round trip, so that a side
// waiting for the answer spins through it; SO_BUSY_POLL's customary 50 µs.
const rpcBusyPoll = 50 * time.Microsecond

// RFC 2544 benchmarking addresses of the two user-space hosts.
var (
	tcpHostA = netip.MustParseAddr("198.18.0.1")
	tcpHostB = netip.MustParseAddr("198.18.0.2")
)

func runTCP(cfg Config) (Report, error) {
	if cfg.Dev {
		return runTCPDev(cfg)
	}
	rep := Report{Scenario: "tcp", Machine: Machine()}
	rows := []string{tcpRowFsw, tcpRowFswKernel, tcpRowFswCut, tcpRowRPC}
	var want []string
	for _, r := range rows {
		if cfg.wants(r) {
			want = append(want, r)
		}
	}
	if len(want) == 0 {
		return rep, nil
	}
	sky, err := newSkyPair(client.Options{ChecksumOffload: true}, true)
	if err != nil {
		return rep, fmt.Errorf("tcp: skylane path: %w", err)
	}
	defer sky.close()
	var kernel *connPair
	for _, row := range want {
		if row != tcpRowFsw && kernel == nil {
			if kernel, err = newKernelPair(); err != nil {
				return rep, fmt.Errorf("tcp: kernel loopback: %w", err)
			}
			defer kernel.close()
		}
		cfg.progress("tcp %s", row)
		switch row {
		case tcpRowFsw:
			pp, err := newPipePair()
			if err != nil {
				return rep, fmt.Errorf("tcp: gVisor pipe: %w", err)
			}
			r, err := streamRow(cfg, row, sky, pp, "two netstacks over gVisor link/pipe, MTU 1500")
			pp.close()
			if err != nil {
				return rep, err
			}
			if rss, err := IdleConnRSS(idleConns); err == nil {
				r.Extra["rss_per_idle_conn_kib"] = round2(rss / 1024)
			} else {
				cfg.progress("  idle-connection RSS not measured: %v", err)
			}
			rep.Results = append(rep.Results, r)
		case tcpRowFswKernel:
			r, err := streamRow(cfg, row, sky, kernel, "kernel TCP over loopback 127.0.0.1")
			if err != nil {
				return rep, err
			}
			rep.Results = append(rep.Results, r)
		case tcpRowFswCut:
			cut, err := newSkyPair(client.Options{ChecksumOffload: true}, false)
			if err != nil {
				return rep, fmt.Errorf("tcp: skylane path without super packets on the wire: %w", err)
			}
			r, err := streamRow(cfg, row, cut, kernel, "kernel TCP over loopback 127.0.0.1")
			cut.close()
			if err != nil {
				return rep, err
			}
			rep.Results = append(rep.Results, r)
		case tcpRowRPC:
			busy, err := newSkyPair(client.Options{BusyPoll: rpcBusyPoll, ChecksumOffload: true}, true)
			if err != nil {
				return rep, fmt.Errorf("tcp: skylane path with busy-poll: %w", err)
			}
			r, err := rpcRow(cfg, row, sky, busy, kernel)
			busy.close()
			if err != nil {
				return rep, err
			}
			rep.Results = append(rep.Results, r)
		}
	}
	return rep, nil
}

// streamRow measures one stream on the Skylane path against base, with the
// batching figures of the Skylane path during the measurement.
func streamRow(cfg Config, row string, sky *skyPair, base *connPair, baseName string) (Result, error) {
	for _, p := range []*connPair{&sky.connPair, base} {
		if _, err := p.stream(tcpWarmup); err != nil {
			return Result{}, fmt.Errorf("%s warm-up: %w", row, err)
		}
	}
	before, err := sky.figures()
	if err != nil {
		return Result{}, err
	}
	var ocpu, bcpu cpuPerGB
	o, b, err := Measure(cfg, row, withCPU(sky.stream, &ocpu), withCPU(base.stream, &bcpu))
	if err != nil {
		return Result{}, err
	}
	after, err := sky.figures()
	if err != nil {
		return Result{}, err
	}
	r := Throughput(row, "Gbit/s", o/1e9, baseName, b/1e9)
	r.Extra = after.since(before)
	cpuExtras(r.Extra, ocpu, bcpu)
	return r, nil
}

// rpcRow measures 64-byte RPC latency, alternating rounds as Measure does,
// and reports the p50 (p99 in the extras): lower is better, so the ratio
// is baseline/value. The busy-poll variant (busy, apps and nexuses
// spinning rpcBusyPoll before they sleep) runs in the same rounds; its
// figures and its CPU per round trip are in the extras, beside ours and
// the baseline's.
func rpcRow(cfg Config, row string, sky, busy *skyPair, kernel *connPair) (Result, error) {
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	var ours, bp, base rpcRounds
	for _, p := range []*connPair{&sky.connPair, &busy.connPair, kernel} {
		if _, err := p.rpc(tcpWarmup); err != nil {
			return Result{}, fmt.Errorf("%s warm-up: %w", row, err)
		}
	}
	for i := range rounds {
		if err := cfg.roundStart(row, i, rounds); err != nil {
			return Result{}, err
		}
		for _, s := range []struct {
			p    *connPair
			into *rpcRounds
			what string
		}{{&sky.connPair, &ours, ""}, {kernel, &base, " baseline"}, {&busy.connPair, &bp, " busy-poll"}} {
			if err := s.into.measure(s.p, d); err != nil {
				return Result{}, fmt.Errorf("%s%s: %w", row, s.what, err)
			}
		}
	}
	r := latencyRow(row, "kernel TCP over loopback 127.0.0.1", ours, base)
	bp.busyExtras(r.Extra, rpcBusyPoll)
	return r, nil
}

// rpcRounds are the round trips of every round of one side of an rpc row,
// and the CPU they took.
type rpcRounds struct {
	lat []time.Duration
	cpu cpuUse
}

// measure runs round trips on p for d (rpc) and adds them and their CPU.
func (r *rpcRounds) measure(p *connPair, d time.Duration) error {
	c0, err := sampleCPU()
	if err != nil {
		return err
	}
	l, err := p.rpc(d)
	if err != nil {
		return err
	}
	c1, err := sampleCPU()
	if err != nil {
		return err
	}
	u := c1.since(c0)
	r.lat = append(r.lat, l...)
	r.cpu.proc += u.proc
	r.cpu.softirq += u.softirq
	return nil
}

// cpuPerRPC is the CPU (process and softirq, as cpu.go measures) per
// round trip, in µs.
func (r rpcRounds) cpuPerRPC() float64 {
	return round2(float64(r.cpu.proc+r.cpu.softirq) / 1e3 / float64(max(len(r.lat), 1)))
}

// busyExtras adds the busy-poll variant's figures to x.
func (r rpcRounds) busyExtras(x map[string]any, budget time.Duration) {
	p50, p99 := percentiles(r.lat)
	x["busy_poll_budget_us"] = budget.Microseconds()
	x["busy_poll_p50_us"] = p50
	x["busy_poll_p99_us"] = p99
	x["busy_poll_cpu_us_per_rpc"] = r.cpuPerRPC()
	x["busy_poll_round_trips"] = len(r.lat)
}

// latencyRow builds an RPC row from every round trip of ours and the
// baseline (each round made at least one, see rpc): the p50 is the row's
// figure, the p99s and the CPU per round trip are in the extras.
func latencyRow(row, baseName string, ours, base rpcRounds) Result {
	op50, op99 := percentiles(ours.lat)
	bp50, bp99 := percentiles(base.lat)
	r := Latency(row, "µs (p50)", op50, "", baseName, bp50, "")
	r.Extra = map[string]any{
		"p99_us": op99, "baseline_p99_us": bp99, "ratio_p99": round2(bp99 / op99),
		"round_trips": len(ours.lat), "baseline_round_trips": len(base.lat),
		"cpu_us_per_rpc": ours.cpuPerRPC(), "baseline_cpu_us_per_rpc": base.cpuPerRPC(),
	}
	return r
}

// percentiles returns the p50 and p99 of lat in microseconds.
func percentiles(lat []time.Duration) (p50, p99 float64) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(d time.Duration) float64 { return round2(float64(d) / 1e3) }
	return us(lat[len(lat)/2]), us(lat[min(len(lat)*99/100, len(lat)-1)])
}

// skyFigures are the counters behind the batching figures.
type skyFigures struct {
	rx          flowswitch.Stats // the receiving host's switch
	tx          flowswitch.Stats // the sending host's switch
	send, recv  stack.Stats      // the endpoints
	wireDrops   uint64           // frames the wire tail-dropped, both ways
	retransmits uint64           // TCP segments the sender retransmitted
}

func (p *skyPair) figures() (skyFigures, error) {
	ra, err := p.na.Stats()
	if err != nil {
		return skyFigures{}, err
	}
	rb, err := p.nb.Stats()
	if err != nil {
		return skyFigures{}, err
	}
	return skyFigures{
		rx: ra.Switch, tx: rb.Switch, send: p.sb.Endpoint().Stats(), recv: p.sa.Endpoint().Stats(),
		wireDrops:   ra.Link.TxDrops + rb.Link.TxDrops,
		retransmits: p.sb.Netstack().Stats().TCP.Retransmits.Value(),
	}, nil
}

// since returns the batching and merging figures between two snapshots:
// the stream runs from host B (sender) to host A (receiver).
func (f skyFigures) since(b skyFigures) map[string]any {
	div := func(x, y uint64) float64 {
		if y == 0 {
			return 0
		}
		return round2(float64(x) / float64(y))
	}
	frames := f.rx.Packets - b.rx.Packets
	return map[string]any{
		"rx_frames_per_batch":      div(frames, f.rx.Batches-b.rx.Batches),
		"rx_segments_per_delivery": div(frames, f.rx.Delivered-b.rx.Delivered),
		"rx_super_packets":         f.rx.SuperPackets - b.rx.SuperPackets,
		"tx_packets_per_send":      div(f.send.TxPackets-b.send.TxPackets, f.send.TxSends-b.send.TxSends),
		"tx_gso_packets":           f.send.TxGSO - b.send.TxGSO,
		"tx_super_whole":           f.tx.TxSuper - b.tx.TxSuper,
		"tx_super_cut":             f.tx.TxSegmented - b.tx.TxSegmented,
		"tx_segments_cut":          f.tx.TxSegments - b.tx.TxSegments,
		"rx_super_split":           f.rx.Split - b.rx.Split,
		"rx_packets_per_poll":      div(f.recv.RxPackets-b.recv.RxPackets, f.recv.RxPolls-b.recv.RxPolls),
		"tx_drops":                 f.tx.TxDrops.Total() + f.rx.TxDrops.Total() - b.tx.TxDrops.Total() - b.rx.TxDrops.Total(),
		"wire_drops":               f.wireDrops - b.wireDrops,
		"tcp_retransmits":          f.retransmits - b.retransmits,
	}
}

// IdleConnRSS returns the resident memory one idle TCP connection between
// two Skylane stacks costs, both ends together (two netstack endpoints, two
// flows, the gonet wrappers): the growth of this process's RSS over n
// connections opened and left idle, divided by n. n must stay within a
// port's flows (512).
func IdleConnRSS(n int) (float64, error) {
	na, nb, sa, sb, err := skyHosts(client.Options{}, true)
	if err != nil {
		return 0, err
	}
	defer func() { sa.Close(); sb.Close(); na.Close(); nb.Close() }()
	ln, err := sa.Listen("tcp4", ":80")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	addr := netip.AddrPortFrom(tcpHostA, 80).String()
	// One connection first, so the rings, pools and processors exist.
	warm, err := sb.Dial("tcp4", addr)
	if err != nil {
		return 0, err
	}
	defer warm.Close()
	before, err := rss()
	if err != nil {
		return 0, err
	}
	for range n {
		c, err := sb.Dial("tcp4", addr)
		if err != nil {
			return 0, err
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		k := len(conns)
		mu.Unlock()
		if k >= 2*n+1 { // n dialed, n+1 accepted
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("only %d of %d connection ends up", k, 2*n+1)
		}
		runtime.Gosched()
	}
	after, err := rss()
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n), nil
}

// rss returns this process's resident set in bytes, after a collection that
// returns freed memory to the OS, so that garbage does not count.
func rss() (int64, error) {
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("read RSS: /proc/self/statm is %q", b)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	return pages * int64(os.Getpagesize()), nil
}
