package metrics

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
)

// DefaultNamespace prefixes every metric name when Options.Namespace is
// empty.
const DefaultNamespace = "skylane"

// Options configure a Collector.
type Options struct {
	// Namespace prefixes every metric name; empty means DefaultNamespace.
	Namespace string
	// MaxFlows is the most flows exported per scrape, the busiest (packets
	// in + out) first: per-flow series are opt-in, since a switch may hold
	// many thousands of flows. 0 or less means no per-flow series.
	MaxFlows int
	// ConstLabels are added to every series, e.g. to tell two switches of
	// one process apart.
	ConstLabels prometheus.Labels
	// Apps, if set, names the app and uid of each port by its channel
	// (the nexus's control server knows them; apps.go): one
	// port_info{port, channel, app, uid} series per exported port. It is
	// called once per scrape.
	Apps func() map[string]App
	// MaxPorts caps the ports exported one by one, the busiest (packets
	// delivered + sent) first; the others are folded into one set of
	// series labelled port="other", channel="other", their values summed.
	// 0 means DefaultMaxPorts.
	MaxPorts int
}

// SnapshotFunc returns the counters of one switch at one instant.
type SnapshotFunc = func() (flowswitch.Snapshot, error)

// SwitchSnapshot returns the SnapshotFunc of sw, which never fails.
func SwitchSnapshot(sw *flowswitch.Switch) SnapshotFunc {
	return func() (flowswitch.Snapshot, error) { return sw.Snapshot(), nil }
}

// family is one metric family read from a T of the snapshot.
type family[T any] struct {
	desc  *prometheus.Desc
	vt    prometheus.ValueType
	value func(*T) float64
}

// builder makes the families' descriptors.
type builder struct {
	ns string
	cl prometheus.Labels
}

func (b builder) desc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(b.ns, "", name), help, labels, b.cl)
}

func counter[T any](b builder, labels []string, name, help string, v func(*T) uint64) family[T] {
	return family[T]{b.desc(name, help, labels), prometheus.CounterValue, func(x *T) float64 { return float64(v(x)) }}
}

func gauge[T any](b builder, labels []string, name, help string, v func(*T) float64) family[T] {
	return family[T]{b.desc(name, help, labels), prometheus.GaugeValue, v}
}

// Label names.
var (
	portLabels = []string{"port", "channel"}
	flowLabels = []string{"port", "flow", "kind"}
	dropLabels = []string{"dir", "place", "reason"}
)

type (
	totals  = flowswitch.SnapshotTotals
	regTot  = flowswitch.SnapshotRegulation
	l2Tot   = flowswitch.SnapshotL2
	portSt  = flowswitch.PortStats
	portReg = flowswitch.PortRegStats
	flowSt  = flowswitch.FlowStats
)

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collector is a prometheus.Collector of one switch's snapshot (see the
// package comment). It is safe for concurrent scrapes: each takes its own
// snapshot.
type Collector struct {
	snap     SnapshotFunc
	maxFlows int
	maxPorts int
	apps     func() map[string]App
	portInfo *prometheus.Desc

	totals  []family[totals]
	link    []family[netif.Stats]
	ports   family[flowswitch.Snapshot] // the number of ports
	drops   *prometheus.Desc
	port    []family[portSt]
	flow    []family[flowSt]
	reg     []family[regTot]
	portReg []family[portReg]
	flowReg []family[flowSt]
	l2      []family[l2Tot]
	// Histograms (hist.go).
	hRxBatch, hSuper, hSojourn *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// New returns a Collector calling snap once per scrape. It panics if snap
// is nil.
func New(snap func() (flowswitch.Snapshot, error), opts Options) *Collector {
	if snap == nil {
		panic("metrics: nil snapshot function")
	}
	b := builder{opts.Namespace, opts.ConstLabels}
	if b.ns == "" {
		b.ns = DefaultNamespace
	}
	c := &Collector{snap: snap, maxFlows: max(opts.MaxFlows, 0), maxPorts: opts.MaxPorts, apps: opts.Apps}
	if c.maxPorts <= 0 {
		c.maxPorts = DefaultMaxPorts
	}
	c.portInfo = b.desc("port_info", "1 for each port exported: its app's name and uid.", []string{"port", "channel", "app", "uid"})
	c.newHists(b)

	c.totals = []family[totals]{
		counter(b, nil, "rx_packets_total", "Frames read from the link.",
			func(t *totals) uint64 { return t.Packets }),
		counter(b, nil, "rx_batches_total", "Input batches holding at least one frame.",
			func(t *totals) uint64 { return t.Batches }),
		counter(b, nil, "rx_flow_batches_total", "Flow batches released (one channel alloc each).",
			func(t *totals) uint64 { return t.FlowBatches }),
		counter(b, nil, "rx_deliveries_total", "Channel deliver calls (at most one per channel per input batch).",
			func(t *totals) uint64 { return t.Deliveries }),
		counter(b, nil, "rx_delivered_packets_total", "Packets put on a channel's RX ring.",
			func(t *totals) uint64 { return t.Delivered }),
		counter(b, nil, "rx_super_packets_total", "TCP super packets formed by merging.",
			func(t *totals) uint64 { return t.SuperPackets }),
		counter(b, nil, "rx_merged_packets_total", "TCP segments absorbed into super packets, after each one's first.",
			func(t *totals) uint64 { return t.Merged }),
		counter(b, nil, "host_delivered_packets_total", "Frames of no flow the host link accepted.",
			func(t *totals) uint64 { return t.HostDelivered }),
		counter(b, nil, "host_tx_packets_total", "Frames read from the host link and accepted by the device link.",
			func(t *totals) uint64 { return t.HostTx }),
		counter(b, nil, "kernel_passed_packets_total", "Frames left to the kernel's stack, passed and not dropped: of no flow on a link the kernel also reads, or passed by the steering program.",
			func(t *totals) uint64 { return t.KernelPassed }),
		counter(b, nil, "tx_packets_total", "Packets that passed the transmit checks and were accepted by the link or the queue.",
			func(t *totals) uint64 { return t.TxPackets }),
		counter(b, nil, "tx_bytes_total", "L3 bytes of the packets counted by tx_packets_total.",
			func(t *totals) uint64 { return t.TxBytes }),
		counter(b, nil, "ports_removed_total", "User ports removed, by request or because their channel was defunct.",
			func(t *totals) uint64 { return t.PortsRemoved }),
		gauge(b, nil, "active_flows", "Flows in the flow table.",
			func(t *totals) float64 { return float64(t.ActiveFlows) }),
		counter(b, nil, "rx_reassembled_datagrams_total", "IP datagrams reassembled from fragments and delivered to an app, as their fragments.",
			func(t *totals) uint64 { return t.Reassembled }),
		gauge(b, nil, "fragments_held_bytes", "Bytes of buffers holding fragments of incomplete datagrams.",
			func(t *totals) float64 { return float64(t.FragmentsHeld) }),
		counter(b, nil, "rx_icmp_errors_total", "ICMP and ICMPv6 errors steered by the flow they quote.",
			func(t *totals) uint64 { return t.ICMPErrors }),
		counter(b, nil, "answers_as_host_total", "Echo replies, TCP resets and ICMP port unreachables the nexus sent as the host of its addresses.",
			func(t *totals) uint64 { return t.Answers }),
	}
	// netif_*: the device link's own counters. Not link_*: those are the
	// AQM's writes to the link (c.reg).
	c.link = []family[netif.Stats]{
		counter(b, nil, "netif_rx_packets_total", "Frames the device link read.",
			func(l *netif.Stats) uint64 { return l.RxPackets }),
		counter(b, nil, "netif_rx_bytes_total", "Bytes of the frames the device link read, link header included.",
			func(l *netif.Stats) uint64 { return l.RxBytes }),
		counter(b, nil, "netif_rx_drops_total", "Frames the device link lost on receive (its ring or buffers full, the kernel's counts included); also drops_total{reason=\"link_rx_lost\"}.",
			func(l *netif.Stats) uint64 { return l.RxDrops }),
		counter(b, nil, "netif_tx_packets_total", "Frames the device link accepted for transmission.",
			func(l *netif.Stats) uint64 { return l.TxPackets }),
		counter(b, nil, "netif_tx_bytes_total", "Bytes of the frames the device link accepted, link header included.",
			func(l *netif.Stats) uint64 { return l.TxBytes }),
		counter(b, nil, "netif_tx_drops_total", "Frames the device link refused because the device was full.",
			func(l *netif.Stats) uint64 { return l.TxDrops }),
		counter(b, nil, "netif_kernel_passed_packets_total", "Frames the device's steering program gave the kernel's stack, never read by user space.",
			func(l *netif.Stats) uint64 { return l.KernelPassed }),
	}
	c.ports = gauge(b, nil, "ports", "User ports.",
		func(s *flowswitch.Snapshot) float64 { return float64(len(s.Ports)) })
	c.drops = b.desc("drops_total", "Packets dropped, by direction (rx, tx), place (switch, port, link) and reason; every reason is listed, zero or not.",
		dropLabels)

	pl := portLabels
	c.port = []family[portSt]{
		gauge(b, pl, "port_flows", "Flows the port owns.",
			func(p *portSt) float64 { return float64(p.Flows) }),
		counter(b, pl, "port_rx_delivered_packets_total", "Packets put on the port's RX ring.",
			func(p *portSt) uint64 { return p.Delivered }),
		counter(b, pl, "port_rx_ring_drops_total", "Packets tail-dropped because the port's RX ring was full.",
			func(p *portSt) uint64 { return p.RxRingDrops }),
		counter(b, pl, "port_tx_packets_total", "Packets of the port that passed the transmit checks.",
			func(p *portSt) uint64 { return p.TxPackets }),
		counter(b, pl, "port_tx_bytes_total", "L3 bytes of the packets counted by port_tx_packets_total.",
			func(p *portSt) uint64 { return p.TxBytes }),
		counter(b, pl, "port_tx_drops_total", "Packets of the port the transmit checks refused.",
			func(p *portSt) uint64 { return p.TxDrops }),
		counter(b, pl, "channel_rx_packets_total", "Packets put on the channel's RX ring.",
			func(p *portSt) uint64 { return p.Ring.RxPackets }),
		counter(b, pl, "channel_rx_bytes_total", "Bytes of the packets put on the channel's RX ring.",
			func(p *portSt) uint64 { return p.Ring.RxBytes }),
		counter(b, pl, "channel_tx_packets_total", "Packets taken from the channel's TX ring.",
			func(p *portSt) uint64 { return p.Ring.TxPackets }),
		counter(b, pl, "channel_tx_bytes_total", "Bytes of the packets taken from the channel's TX ring.",
			func(p *portSt) uint64 { return p.Ring.TxBytes }),
		counter(b, pl, "channel_alloc_failures_total", "Buffers the channel's pool could not supply (at its maximum).",
			func(p *portSt) uint64 { return p.Ring.AllocFails }),
		counter(b, pl, "channel_notifications_total", "Eventfd signals sent to the app.",
			func(p *portSt) uint64 { return p.Ring.Notifications }),
		counter(b, pl, "channel_wakeups_total", "Eventfd waits the nexus side woke from.",
			func(p *portSt) uint64 { return p.Ring.Wakeups }),
		counter(b, pl, "channel_reclaimed_buffers_total", "Buffers returned through the free ring.",
			func(p *portSt) uint64 { return p.Ring.Reclaimed }),
		counter(b, pl, "channel_alloc_handed_buffers_total", "Buffers put on the alloc ring.",
			func(p *portSt) uint64 { return p.Ring.AllocHanded }),
		counter(b, pl, "channel_segments_added_total", "Buffer segments added to the channel's pool.",
			func(p *portSt) uint64 { return p.Ring.SegmentsAdded }),
		counter(b, pl, "channel_segments_freed_total", "Buffer segments freed from the channel's pool.",
			func(p *portSt) uint64 { return p.Ring.SegmentsFreed }),
	}

	c.reg = []family[regTot]{
		gauge(b, nil, "aqm_queued_packets", "Packets in the AQM now.",
			func(r *regTot) float64 { return float64(r.Queued) }),
		gauge(b, nil, "aqm_queued_bytes", "Frame bytes in the AQM now.",
			func(r *regTot) float64 { return float64(r.QueuedBytes) }),
		gauge(b, nil, "aqm_queued_flows", "Flows with packets in the AQM now.",
			func(r *regTot) float64 { return float64(r.QueuedFlows) }),
		counter(b, nil, "aqm_enqueued_packets_total", "Packets the AQM accepted.",
			func(r *regTot) uint64 { return r.Enqueued }),
		counter(b, nil, "aqm_dequeued_packets_total", "Packets the AQM gave out.",
			func(r *regTot) uint64 { return r.Dequeued }),
		counter(b, nil, "aqm_ecn_marks_total", "Packets the AQM marked ECN CE.",
			func(r *regTot) uint64 { return r.ECNMarks }),
		counter(b, nil, "aqm_shared_packets_total", "Packets queued in the shared flow because every slot was busy.",
			func(r *regTot) uint64 { return r.Shared }),
		counter(b, nil, "advisory_suspends_total", "Flow advisory suspensions published to the apps.",
			func(r *regTot) uint64 { return r.Suspends }),
		counter(b, nil, "advisory_resumes_total", "Flow advisory resumptions published to the apps.",
			func(r *regTot) uint64 { return r.Resumes }),
		counter(b, nil, "advisory_errors_total", "Flow advisory changes a channel refused.",
			func(r *regTot) uint64 { return r.AdvisoryErrors }),
		counter(b, nil, "link_tx_packets_total", "Frames the AQM gave the device, which accepted them.",
			func(r *regTot) uint64 { return r.LinkPackets }),
		counter(b, nil, "link_tx_bytes_total", "Frame bytes of link_tx_packets_total.",
			func(r *regTot) uint64 { return r.LinkBytes }),
		counter(b, nil, "link_paced_total", "Times the pacer held the AQM back for want of credit.",
			func(r *regTot) uint64 { return r.Paced }),
		counter(b, nil, "host_queued_packets_total", "Host port frames the AQM accepted.",
			func(r *regTot) uint64 { return r.HostQueued }),
		counter(b, nil, "tx_rounds_total", "Transmit rounds over the ports.",
			func(r *regTot) uint64 { return r.Rounds }),
		counter(b, nil, "tx_rate_limited_total", "Ports skipped in a transmit round because their rate cap was spent.",
			func(r *regTot) uint64 { return r.RateLimited }),
		counter(b, nil, "tx_backpressured_total", "Advisory ports held back in a transmit round because the AQM was at its high-water mark.",
			func(r *regTot) uint64 { return r.Backpressured }),
		counter(b, nil, "rx_held_batches_total", "Input batches adaptive batching held back.",
			func(r *regTot) uint64 { return r.Held }),
		gauge(b, nil, "rx_mitigation_level", "Adaptive batching's level now (0: delivering at once).",
			func(r *regTot) float64 { return float64(r.Level) }),
		gauge(b, nil, "rx_mitigation_packets_per_second", "Adaptive batching's smoothed receive rate.",
			func(r *regTot) float64 { return r.RxRate }),
		counter(b, nil, "stalled_ports_total", "Ports made defunct because their RX ring stalled.",
			func(r *regTot) uint64 { return r.Stalled }),
	}
	c.portReg = []family[portReg]{
		gauge(b, pl, "port_advisories", "1 if the port's app honours flow advisories, else 0.",
			func(r *portReg) float64 { return b2f(r.Advisories) }),
		gauge(b, pl, "port_tx_rate_limit_bytes_per_second", "The port's transmit rate cap in IP bytes per second (0: none).",
			func(r *portReg) float64 { return float64(r.Rate) / 8 }),
		counter(b, pl, "port_tx_granted_packets_total", "Packets the port's transmit budgets allowed.",
			func(r *portReg) uint64 { return r.Granted }),
		counter(b, pl, "port_tx_taken_packets_total", "Packets taken from the port's TX ring under its budgets.",
			func(r *portReg) uint64 { return r.Taken }),
		counter(b, pl, "port_tx_rounds_total", "Transmit rounds the port was served in.",
			func(r *portReg) uint64 { return r.Rounds }),
		counter(b, pl, "port_tx_full_rounds_total", "Transmit rounds the port used its whole budget in.",
			func(r *portReg) uint64 { return r.FullRounds }),
		counter(b, pl, "port_tx_rate_limited_total", "Transmit rounds the port sat out because its rate cap was spent.",
			func(r *portReg) uint64 { return r.Limited }),
		counter(b, pl, "port_tx_backpressured_total", "Transmit rounds the port was held back in because the AQM was at its high-water mark.",
			func(r *portReg) uint64 { return r.Backpress }),
		counter(b, pl, "port_advisory_suspends_total", "Flow advisory suspensions published to the port.",
			func(r *portReg) uint64 { return r.Suspends }),
		counter(b, pl, "port_advisory_resumes_total", "Flow advisory resumptions published to the port.",
			func(r *portReg) uint64 { return r.Resumes }),
	}

	c.l2 = []family[l2Tot]{
		counter(b, nil, "l2_frames_total", "ARP and NDP frames the resolver consumed.",
			func(l *l2Tot) uint64 { return l.Switch.Frames }),
		counter(b, nil, "l2_replies_total", "ARP and NDP answers written to the device.",
			func(l *l2Tot) uint64 { return l.Switch.Replies }),
		counter(b, nil, "l2_suppressed_replies_total", "Answers discarded because the kernel answers for the address.",
			func(l *l2Tot) uint64 { return l.Switch.Suppressed }),
		counter(b, nil, "l2_to_host_frames_total", "Consumed ARP and NDP frames also given to the host port.",
			func(l *l2Tot) uint64 { return l.Switch.ToHost }),
		counter(b, nil, "l2_held_packets_total", "Transmitted packets handed to the resolver to wait for their next hop.",
			func(l *l2Tot) uint64 { return l.Switch.Held }),
		counter(b, nil, "l2_poll_frames_total", "Frames the resolver released (solicitations, held packets) to the device.",
			func(l *l2Tot) uint64 { return l.Switch.PollFrames }),
		counter(b, nil, "neigh_replies_sent_total", "ARP replies and neighbour advertisements the resolver built.",
			func(l *l2Tot) uint64 { return l.Resolver.RepliesSent }),
		counter(b, nil, "neigh_solicits_sent_total", "ARP requests and neighbour solicitations the resolver sent.",
			func(l *l2Tot) uint64 { return l.Resolver.SolicitsSent }),
		counter(b, nil, "neigh_resolved_total", "Neighbour entries resolved.",
			func(l *l2Tot) uint64 { return l.Resolver.Resolved }),
		counter(b, nil, "neigh_failed_total", "Neighbour entries removed after unanswered solicitations.",
			func(l *l2Tot) uint64 { return l.Resolver.Failed }),
		counter(b, nil, "neigh_pending_queued_total", "Packets the resolver held for resolution.",
			func(l *l2Tot) uint64 { return l.Resolver.PendingQueued }),
		counter(b, nil, "neigh_pending_sent_total", "Held packets released after resolution.",
			func(l *l2Tot) uint64 { return l.Resolver.PendingSent }),
		counter(b, nil, "neigh_pending_overflow_total", "Packets the resolver refused to hold (queue or table full).",
			func(l *l2Tot) uint64 { return l.Resolver.PendingOverflow }),
		counter(b, nil, "neigh_pending_expired_total", "Held packets dropped because resolution failed.",
			func(l *l2Tot) uint64 { return l.Resolver.PendingExpired }),
		counter(b, nil, "neigh_bad_frames_total", "ARP and NDP frames the resolver's parsers refused.",
			func(l *l2Tot) uint64 { return l.Resolver.BadFrames }),
		counter(b, nil, "neigh_route_queries_total", "Routes asked of the kernel: new remotes, expired or changed routes.",
			func(l *l2Tot) uint64 { return l.Resolver.RouteQueries }),
		counter(b, nil, "neigh_route_changes_total", "Kernel answers that changed a remote's next hop.",
			func(l *l2Tot) uint64 { return l.Resolver.RouteChanges }),
		counter(b, nil, "neigh_no_route_total", "Packets refused or dropped because the kernel routes their destination elsewhere or nowhere.",
			func(l *l2Tot) uint64 { return l.Resolver.NoRoute }),
		counter(b, nil, "neigh_mac_changes_total", "Next hops whose MAC the kernel replaced (a replaced host).",
			func(l *l2Tot) uint64 { return l.Resolver.MACChanges }),
		counter(b, nil, "neigh_routes_evicted_total", "Idle routes evicted to make room for a new remote.",
			func(l *l2Tot) uint64 { return l.Resolver.RoutesEvicted }),
		counter(b, nil, "neigh_routes_expired_total", "Routes forgotten after their TTL unused.",
			func(l *l2Tot) uint64 { return l.Resolver.RoutesExpired }),
		gauge(b, nil, "neigh_pending_packets", "Packets held now, waiting for their next hop.",
			func(l *l2Tot) float64 { return float64(l.Resolver.Pending) }),
		gauge(b, nil, "neigh_routes", "Routes cached, one per remote.",
			func(l *l2Tot) float64 { return float64(l.RoutesTotal) }),
	}

	if c.maxFlows > 0 {
		fl := flowLabels
		c.flow = []family[flowSt]{
			counter(b, fl, "flow_rx_packets_total", "Packets received on the flow.",
				func(f *flowSt) uint64 { return f.PacketsIn }),
			counter(b, fl, "flow_rx_bytes_total", "Bytes received on the flow.",
				func(f *flowSt) uint64 { return f.BytesIn }),
			counter(b, fl, "flow_tx_packets_total", "Packets sent on the flow.",
				func(f *flowSt) uint64 { return f.PacketsOut }),
			counter(b, fl, "flow_tx_bytes_total", "Bytes sent on the flow.",
				func(f *flowSt) uint64 { return f.BytesOut }),
		}
		c.flowReg = []family[flowSt]{
			gauge(b, fl, "flow_aqm_queued_packets", "The flow's packets in the AQM now.",
				func(f *flowSt) float64 { return float64(f.Queued) }),
			gauge(b, fl, "flow_suspended", "1 if the AQM holds the flow back now, else 0.",
				func(f *flowSt) float64 { return b2f(f.Suspended) }),
			counter(b, fl, "flow_aqm_drops_total", "The flow's AQM drops since its queue slot took it.",
				func(f *flowSt) uint64 { return f.AQMDrops }),
			counter(b, fl, "flow_ecn_marks_total", "The flow's ECN marks since its queue slot took it.",
				func(f *flowSt) uint64 { return f.ECNMarks }),
		}
	}
	return c
}

func describe[T any](ch chan<- *prometheus.Desc, fams []family[T]) {
	for i := range fams {
		ch <- fams[i].desc
	}
}

// Describe sends the descriptor of every family the collector may export.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	describe(ch, c.totals)
	describe(ch, c.link)
	ch <- c.ports.desc
	ch <- c.drops
	describe(ch, c.port)
	describe(ch, c.flow)
	describe(ch, c.reg)
	describe(ch, c.portReg)
	describe(ch, c.flowReg)
	describe(ch, c.l2)
	c.describeHists(ch)
	ch <- c.portInfo
}

// collect sends one sample of each family of fams, read from x.
func collect[T any](ch chan<- prometheus.Metric, fams []family[T], x *T, labels ...string) {
	for i := range fams {
		f := &fams[i]
		send(ch, f.desc, f.vt, f.value(x), labels...)
	}
}

// send sends one sample; one that cannot be built (a label value that is
// not UTF-8) is sent as an invalid metric, failing the scrape rather than
// the process.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, vt prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, vt, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

// Collect takes one snapshot and sends its samples. A snapshot error is
// sent as an invalid metric, which fails the scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap, err := c.snap()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.totals[0].desc, fmt.Errorf("flowswitch snapshot: %w", err))
		return
	}
	collect(ch, c.totals, &snap.Totals)
	collect(ch, c.link, &snap.Link)
	send(ch, c.ports.desc, c.ports.vt, c.ports.value(&snap))
	c.collectDrops(ch, snap.Drops)
	c.collectPorts(ch, snap.Ports)
	for _, f := range c.topFlows(snap.Flows) {
		id := strconv.FormatUint(uint64(f.Port), 10)
		collect(ch, c.flow, f, id, f.Key, f.Kind)
		if snap.Regulation != nil {
			collect(ch, c.flowReg, f, id, f.Key, f.Kind)
		}
	}
	if snap.Regulation != nil {
		collect(ch, c.reg, snap.Regulation)
	}
	if snap.L2 != nil {
		collect(ch, c.l2, snap.L2)
	}
	c.collectHists(ch, &snap)
}

// collectDrops sends one sample per drop reason. The snapshot lists each
// reason once; a repeat is summed, since a duplicate series would fail the
// whole scrape.
func (c *Collector) collectDrops(ch chan<- prometheus.Metric, drops []flowswitch.Drop) {
	type key struct{ dir, place, reason string }
	sum := make(map[key]uint64, len(drops))
	order := make([]key, 0, len(drops))
	for _, d := range drops {
		k := key{d.Dir, d.Place, d.Reason}
		if _, ok := sum[k]; !ok {
			order = append(order, k)
		}
		sum[k] += d.Packets
	}
	for _, k := range order {
		send(ch, c.drops, prometheus.CounterValue, float64(sum[k]), k.dir, k.place, k.reason)
	}
}

// topFlows returns the at most maxFlows busiest flows (packets in + out),
// ties in the snapshot's order (port, then token), one per port and key.
func (c *Collector) topFlows(flows []flowSt) []*flowSt {
	if c.maxFlows == 0 || len(flows) == 0 {
		return nil
	}
	all := make([]*flowSt, len(flows))
	for i := range flows {
		all[i] = &flows[i]
	}
	slices.SortStableFunc(all, func(a, b *flowSt) int {
		return cmp.Compare(b.PacketsIn+b.PacketsOut, a.PacketsIn+a.PacketsOut)
	})
	// Keys are unique in a flow table; skip a repeat rather than fail the
	// scrape with a duplicate series.
	type key struct {
		port uint64
		key  string
	}
	seen := make(map[key]bool, min(len(all), c.maxFlows))
	out := all[:0]
	for _, f := range all {
		if len(out) == c.maxFlows {
			break
		}
		k := key{uint64(f.Port), f.Key}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, f)
	}
	return out
}
