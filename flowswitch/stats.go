package flowswitch

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/histogram"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Snapshot is a copy of every counter of the switch at one instant: the
// totals, each port with its channel's ring counters, each flow, and one
// counter per drop reason. It is plain data with JSON tags, for `skylane`
// to print (WriteTable) or encode.
type Snapshot struct {
	Totals SnapshotTotals `json:"totals"`
	Ports  []PortStats    `json:"ports"`
	Flows  []FlowStats    `json:"flows"`
	// Link is the device link's own counters (netif.Stats): what it read
	// and wrote, what it lost, what its steering passed to the kernel.
	Link netif.Stats `json:"link"`
	// Drops has every drop reason, in the order the checks run, zero or
	// not: RX parse reasons, then the other RX reasons, then every TX
	// check, then the transmit queue's and neighbour resolution's, and
	// last the link's own receive losses.
	Drops []Drop `json:"drops"`
	// Regulation is the AQM's figures; nil without Options.Regulation.
	Regulation *SnapshotRegulation `json:"regulation,omitempty"`
	// L2 is neighbour resolution's figures; nil without a resolver.
	L2 *SnapshotL2 `json:"l2,omitempty"`
	// Hists are the datapath's histograms (hist.go).
	Hists SnapshotHists `json:"hists"`
}

// SnapshotRegulation are the regulation layer's counters (RegulationStats)
// and the queue's occupancy.
type SnapshotRegulation struct {
	Queued         int     `json:"queued"`       // packets in the AQM now
	QueuedBytes    int     `json:"queued_bytes"` // their frame bytes
	QueuedFlows    int     `json:"queued_flows"` // flows with packets queued
	Enqueued       uint64  `json:"enqueued"`
	Dequeued       uint64  `json:"dequeued"`
	CoDelDrops     uint64  `json:"codel_drops"`
	OverflowDrops  uint64  `json:"overflow_drops"`
	EarlyDrops     uint64  `json:"early_drops"`
	Forgotten      uint64  `json:"forgotten"` // discarded when their flow was torn down
	ECNMarks       uint64  `json:"ecn_marks"`
	Shared         uint64  `json:"shared"`        // frames in the shared flow: every slot was busy
	Suspends       uint64  `json:"suspends"`      // advisory suspensions published
	Resumes        uint64  `json:"resumes"`       // advisory resumptions published
	AdvisoryErrors uint64  `json:"advisory_errs"` // changes the channel refused
	LinkPackets    uint64  `json:"link_packets"`
	LinkBytes      uint64  `json:"link_bytes"`
	LinkDrops      uint64  `json:"link_drops"` // refused by a full device
	Paced          uint64  `json:"paced"`      // times the pacer held the queue back
	HostQueued     uint64  `json:"host_queued"`
	Rounds         uint64  `json:"tx_rounds"`
	RateLimited    uint64  `json:"tx_rate_limited"`
	Backpressured  uint64  `json:"tx_backpressured"`
	Held           uint64  `json:"rx_held_batches"` // input batches adaptive batching held
	Level          int     `json:"rx_mitigation_level"`
	RxRate         float64 `json:"rx_mitigation_pps"` // the smoothed receive rate
	// Sojourn is the AQM's histogram of each dequeued packet's wait, in
	// seconds.
	Sojourn histogram.Snapshot `json:"sojourn"`
	Stalled uint64             `json:"stalled_ports"`
}

// SnapshotL2 are neighbour resolution's counters: the switch's side and
// the resolver's.
type SnapshotL2 struct {
	Switch   L2Stats     `json:"switch"`
	Resolver neigh.Stats `json:"resolver"`
	// Routes are the cached routes, most recently used first, and
	// Neighbors the next hops they use, when the resolver keeps routes
	// (neigh.Routes): at most MaxSnapshotRoutes of each; RoutesTotal
	// counts every route.
	Routes      []neigh.RouteInfo    `json:"routes,omitempty"`
	Neighbors   []neigh.NeighborInfo `json:"neighbors,omitempty"`
	RoutesTotal int                  `json:"routes_total,omitempty"`
}

// MaxSnapshotRoutes bounds SnapshotL2's lists: a stats reply holds them
// in one message (about 150 bytes each in JSON).
const MaxSnapshotRoutes = 256

// SnapshotTotals are the switch-wide counters (see Stats).
type SnapshotTotals struct {
	Packets       uint64 `json:"rx_packets"`
	Batches       uint64 `json:"rx_batches"`
	FlowBatches   uint64 `json:"rx_flow_batches"`
	Deliveries    uint64 `json:"rx_deliveries"`
	Delivered     uint64 `json:"rx_delivered"`
	SuperPackets  uint64 `json:"rx_super_packets"`
	Merged        uint64 `json:"rx_merged"`
	HostDelivered uint64 `json:"host_delivered"`
	// KernelPassed counts the frames left to the kernel's stack, passed
	// and not dropped: those of no flow the switch read from a
	// netif.KernelTap (Stats.KernelKept), and those the link's steering
	// program never gave user space (netif.Stats.KernelPassed).
	KernelPassed uint64 `json:"kernel_passed"`
	HostTx       uint64 `json:"host_tx"`
	TxPackets    uint64 `json:"tx_packets"`
	TxBytes      uint64 `json:"tx_bytes"`
	TxSuper      uint64 `json:"tx_super"`     // super packets handed to the link whole
	TxSegmented  uint64 `json:"tx_segmented"` // super packets the switch cut
	TxSegments   uint64 `json:"tx_segments"`  // segments it cut them into
	// TxCsumCompleted: checksums apps left to the wire that the switch
	// completed for a device (csum.go).
	TxCsumCompleted uint64 `json:"tx_csum_completed"`
	PortsRemoved    uint64 `json:"ports_removed"`
	ActiveFlows     int    `json:"active_flows"`
	// Fragments, ICMP errors and answers as a host (frag.go, answer.go).
	Reassembled   uint64 `json:"rx_reassembled"`  // datagrams reassembled and delivered
	FragmentsHeld int    `json:"fragments_held"`  // bytes of fragment buffers held now
	ICMPErrors    uint64 `json:"rx_icmp_errors"`  // ICMP errors steered by the flow they quote
	Answers       uint64 `json:"answers_as_host"` // echo replies, resets and unreachables sent
}

// PortStats are one user port's counters.
type PortStats struct {
	Port        flow.PortID `json:"port"`
	Channel     string      `json:"channel"`
	Flows       int         `json:"flows"`
	Delivered   uint64      `json:"rx_delivered"`
	RxRingDrops uint64      `json:"rx_ring_drops"`
	TxPackets   uint64      `json:"tx_packets"`
	TxBytes     uint64      `json:"tx_bytes"`
	TxDrops     uint64      `json:"tx_drops"`
	// Ring is the channel's own counters (rings, pool, notifications).
	Ring channel.Counters `json:"ring"`
	// Regulation is the port's TX budgets, rate cap and advisory
	// changes; nil without Options.Regulation.
	Regulation *PortRegStats `json:"regulation,omitempty"`
}

// FlowStats are one active flow's identity and counters.
type FlowStats struct {
	Port       flow.PortID `json:"port"`
	Key        string      `json:"key"`
	Kind       string      `json:"kind"`
	ID         string      `json:"id"` // hex
	Token      uint32      `json:"token"`
	Advisory   uint32      `json:"advisory"`
	PacketsIn  uint64      `json:"packets_in"`
	BytesIn    uint64      `json:"bytes_in"`
	PacketsOut uint64      `json:"packets_out"`
	BytesOut   uint64      `json:"bytes_out"`
	// The flow's state in the AQM (with Regulation, while it has any):
	// packets queued, whether the policy holds it back (suspended, or
	// early-dropping without an advisory), and its drops and marks since
	// its queue slot took it.
	Queued    int    `json:"queued,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`
	AQMDrops  uint64 `json:"aqm_drops,omitempty"`
	ECNMarks  uint64 `json:"ecn_marks,omitempty"`
}

// Drop is one drop reason's counter.
type Drop struct {
	Dir string `json:"dir"` // "rx" or "tx"
	// Place is where the packet was lost: "switch" (its checks, queues
	// and the host port), "port" (a user port's limits, ring, pool and
	// transmit checks) or "link" (the device refused or lost it).
	Place   string `json:"place"`
	Reason  string `json:"reason"` // snake_case, stable; unique per Dir
	Packets uint64 `json:"packets"`
}

// Places of Drop.Place.
const (
	PlaceSwitch = "switch"
	PlacePort   = "port"
	PlaceLink   = "link"
)

// Snapshot returns the switch's counters. It takes the switch's lock, so it
// is safe while the datapath runs; it allocates (it is a control-plane call) and
// takes time in proportion to the number of flows.
func (s *Switch) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.statsLocked()
	snap := Snapshot{Totals: SnapshotTotals{
		Packets: st.Packets, Batches: st.Batches, FlowBatches: st.FlowBatches,
		Deliveries: st.Deliveries, Delivered: st.Delivered,
		SuperPackets: st.SuperPackets, Merged: st.Merged,
		HostDelivered: st.HostDelivered, HostTx: st.HostTx, KernelPassed: st.KernelKept,
		TxPackets: st.TxPackets, TxBytes: st.TxBytes,
		TxSuper: st.TxSuper, TxSegmented: st.TxSegmented, TxSegments: st.TxSegments,
		TxCsumCompleted: st.TxCsumCompleted,
		PortsRemoved:    st.PortsRemoved, ActiveFlows: s.table.Len(),
		Reassembled: st.Reassembled, FragmentsHeld: st.Reassembly.HeldBytes, ICMPErrors: st.ICMPErrors,
		Answers: st.Answers.EchoReplies + st.Answers.Resets + st.Answers.Unreachable,
	}}
	flows := map[flow.PortID]int{}
	now := s.now()
	s.table.ForEach(func(e *flow.Entry) bool {
		c := e.Counters()
		id := e.ID()
		fs := FlowStats{
			Port: e.Port(), Key: e.Key().String(), Kind: e.Kind().String(), ID: hex.EncodeToString(id[:]),
			Token: e.Token(), Advisory: e.AdvisoryIndex(),
			PacketsIn: c.PacketsIn, BytesIn: c.BytesIn, PacketsOut: c.PacketsOut, BytesOut: c.BytesOut,
		}
		if s.reg != nil {
			if q, ok := s.reg.q.Flow(e.Token(), now); ok {
				fs.Queued, fs.Suspended = q.Packets, q.Suspended
				fs.AQMDrops, fs.ECNMarks = q.CoDelDrops+q.OverflowDrops, q.ECNMarks
			}
		}
		snap.Flows = append(snap.Flows, fs)
		flows[e.Port()]++
		return true
	})
	sort.Slice(snap.Flows, func(i, j int) bool {
		a, b := &snap.Flows[i], &snap.Flows[j]
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Token < b.Token
	})
	for _, p := range s.ports {
		if p == nil {
			continue
		}
		c := p.ch.Counters()
		ps := PortStats{
			Port: p.id, Channel: p.ch.Name(), Flows: flows[p.id],
			Delivered: p.delivered, RxRingDrops: c.RxDrops,
			TxPackets: p.tx.packets, TxBytes: p.tx.bytes, TxDrops: p.tx.drops,
			Ring: c,
		}
		if s.reg != nil {
			rs := p.reg.st
			rs.Advisories, rs.Rate = p.reg.adv, p.reg.rate
			rs.RxRate, rs.RxBudget, rs.RxLimited = p.rx.rate, p.rx.budgetDrops, p.rx.rateDrops
			ps.Regulation = &rs
		}
		snap.Ports = append(snap.Ports, ps)
	}
	snap.Link = s.link.Stats()
	snap.Totals.KernelPassed += snap.Link.KernelPassed
	var nb *neigh.Stats
	if s.l2.nb != nil {
		x := s.l2.nb.Stats()
		nb = &x
	}
	snap.Drops = drops(&st, nb, &snap.Link)
	snap.Hists = SnapshotHists{RxBatch: s.hist.rxBatch.Snapshot(), SuperPacket: s.hist.super.Snapshot()}
	if s.reg != nil {
		r, q := &st.Regulation, &st.Regulation.Queue
		snap.Regulation = &SnapshotRegulation{
			Queued: q.Packets, QueuedBytes: q.Bytes, QueuedFlows: q.ActiveFlows,
			Enqueued: q.Enqueued, Dequeued: q.Dequeued, CoDelDrops: q.CoDelDrops, OverflowDrops: q.OverflowDrops,
			EarlyDrops: q.EarlyDrops, Forgotten: q.Forgotten, ECNMarks: q.ECNMarks, Shared: q.Shared,
			Suspends: r.Suspends, Resumes: r.Resumes, AdvisoryErrors: r.AdvisoryErrors,
			LinkPackets: r.LinkPackets, LinkBytes: r.LinkBytes, LinkDrops: r.LinkDrops, Paced: r.Paced,
			HostQueued: r.HostQueued, Rounds: r.Rounds, RateLimited: r.RateLimited, Backpressured: r.Backpressured,
			Held: r.Held, Level: r.MitigationLevel, Stalled: r.Stalled,
		}
		if m := s.reg.mit; m != nil {
			snap.Regulation.RxRate = m.Rate()
		}
		snap.Regulation.Sojourn = s.reg.q.Sojourn()
	}
	if nb != nil {
		snap.L2 = &SnapshotL2{Switch: st.L2, Resolver: *nb}
		if t, ok := s.l2.nb.(interface {
			Table(int) ([]neigh.RouteInfo, []neigh.NeighborInfo, int)
		}); ok {
			snap.L2.Routes, snap.L2.Neighbors, snap.L2.RoutesTotal = t.Table(MaxSnapshotRoutes)
		}
	}
	return snap
}

// ParseDrops counts frames packet.Parse rejected, indexed by packet.Reason.
type ParseDrops [packet.NumReasons]uint64

// MarshalJSON implements json.Marshaler: every reason by its name (as
// Drop.Reason has it, without the "parse_" prefix), zero or not, rather
// than an array whose indexes say nothing.
func (p ParseDrops) MarshalJSON() ([]byte, error) {
	m := make(map[string]uint64, len(p)-1)
	for r := packet.Reason(1); r < packet.NumReasons; r++ {
		m[r.String()] = p[r]
	}
	return json.Marshal(m)
}

// drops lists every drop reason of st, in check order, and the link's.
func drops(st *Stats, nb *neigh.Stats, link *netif.Stats) []Drop {
	var out []Drop
	add := func(dir, place, reason string, n uint64) { out = append(out, Drop{dir, place, reason, n}) }
	for r := packet.Reason(1); r < packet.NumReasons; r++ {
		add("rx", PlaceSwitch, "parse_"+r.String(), st.ParseDrops[r])
	}
	add("rx", PlaceSwitch, "no_flow", st.NoFlow)
	ra := &st.Reassembly
	add("rx", PlaceSwitch, "frag_overlap", ra.Overlaps)
	add("rx", PlaceSwitch, "frag_oversize", ra.Oversize)
	add("rx", PlaceSwitch, "frag_malformed", ra.Malformed)
	add("rx", PlaceSwitch, "frag_too_many", ra.TooMany)
	add("rx", PlaceSwitch, "frag_timeout", ra.Timeouts)
	add("rx", PlaceSwitch, "frag_duplicate", ra.Duplicates)
	add("rx", PlaceSwitch, "frag_source_full", ra.SourceFull)
	add("rx", PlaceSwitch, "frag_memory_full", ra.MemoryFull)
	add("rx", PlaceSwitch, "host_full", st.HostDrops)
	add("rx", PlacePort, "oversize", st.Oversize)
	add("rx", PlaceSwitch, "split_csum", st.SplitCsumDrops)
	add("rx", PlacePort, "alloc_fail", st.AllocFails)
	add("rx", PlacePort, "rx_ring_full", st.RxRingDrops)
	add("rx", PlacePort, "rx_budget", st.RxBudgetDrops)
	add("rx", PlacePort, "rx_rate", st.RxRateDrops)
	add("rx", PlacePort, "listen_share", st.ListenDrops)
	for _, r := range st.TxDrops.List() {
		add("tx", PlacePort, r.Reason, r.Packets)
	}
	q := &st.Regulation.Queue
	add("tx", PlaceSwitch, regulate.ReasonCoDel, q.CoDelDrops)
	add("tx", PlaceSwitch, regulate.ReasonOverflow, q.OverflowDrops)
	add("tx", PlaceSwitch, regulate.ReasonEarly, q.EarlyDrops+q.Refused)
	add("tx", PlaceSwitch, "aqm_forgotten", q.Forgotten)
	// Every frame the device refused is in the link's TxDrops (the
	// netif.Link contract), whoever wrote it: the switch's direct writes
	// too, which the switch does not count. The switch's own count (AQM,
	// resolver) is the floor, for a link that counts less.
	add("tx", PlaceLink, "device_full", max(st.Regulation.LinkDrops+st.L2.DeviceDrops, link.TxDrops))
	// Refused by the resolver's Hold (its queue full, or a remote the
	// kernel does not route through the link), then dropped after being
	// held (no answer in time, or the remote turned out unreachable).
	add("tx", PlaceSwitch, "neigh_hold_full", st.L2.HoldDrops)
	var expired uint64
	if nb != nil {
		expired = nb.PendingExpired
	}
	add("tx", PlaceSwitch, "neigh_expired", expired)
	// The link's receive losses happen before the switch reads: no room
	// in its ring or buffer (the kernel's counts included).
	add("rx", PlaceLink, "link_rx_lost", link.RxDrops)
	return out
}

// WriteTable writes snap as aligned text tables: totals, ports, rings,
// the drop reasons that are not zero, and the flows (at most maxFlows of
// them, the busiest first; maxFlows < 0 means all).
func (snap *Snapshot) WriteTable(w io.Writer, maxFlows int) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	t := &snap.Totals
	fmt.Fprintf(tw, "switch\trx packets\tbatches\tflow batches\tdeliveries\tdelivered\tsuper packets\tmerged\thost in\thost out\ttx packets\ttx bytes\tflows\tports removed\t\n")
	fmt.Fprintf(tw, "\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", t.Packets, t.Batches, t.FlowBatches,
		t.Deliveries, t.Delivered, t.SuperPackets, t.Merged, t.HostDelivered, t.HostTx, t.TxPackets, t.TxBytes,
		t.ActiveFlows, t.PortsRemoved)
	if err := section(w, tw); err != nil {
		return err
	}
	fmt.Fprintf(tw, "port\tchannel\tflows\tdelivered\trx ring drops\ttx packets\ttx bytes\ttx drops\t\n")
	for _, p := range snap.Ports {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", p.Port, p.Channel, p.Flows, p.Delivered, p.RxRingDrops,
			p.TxPackets, p.TxBytes, p.TxDrops)
	}
	if err := section(w, tw); err != nil {
		return err
	}
	fmt.Fprintf(tw, "ring\tchannel\trx packets\trx bytes\trx drops\ttx packets\ttx bytes\talloc fails\tnotifications\twakeups\treclaimed\talloc handed\tsegments +\tsegments -\t\n")
	for _, p := range snap.Ports {
		r := &p.Ring
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", p.Port, p.Channel, r.RxPackets, r.RxBytes,
			r.RxDrops, r.TxPackets, r.TxBytes, r.AllocFails, r.Notifications, r.Wakeups, r.Reclaimed, r.AllocHanded,
			r.SegmentsAdded, r.SegmentsFreed)
	}
	if err := section(w, tw); err != nil {
		return err
	}
	if rg := snap.Regulation; rg != nil {
		fmt.Fprintf(tw, "aqm\tqueued\tflows\tenqueued\tdequeued\tcodel drops\toverflow drops\tearly drops\tecn marks\tsuspends\tresumes\tlink packets\tlink drops\tpaced\trx held\trx level\tstalled\t\n")
		fmt.Fprintf(tw, "\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", rg.Queued, rg.QueuedFlows,
			rg.Enqueued, rg.Dequeued, rg.CoDelDrops, rg.OverflowDrops, rg.EarlyDrops, rg.ECNMarks, rg.Suspends, rg.Resumes,
			rg.LinkPackets, rg.LinkDrops, rg.Paced, rg.Held, rg.Level, rg.Stalled)
		if err := section(w, tw); err != nil {
			return err
		}
		fmt.Fprintf(tw, "tx budget\tchannel\tadvisories\trate bit/s\trounds\tgranted\ttaken\tfull rounds\trate limited\tbackpressured\tsuspends\tresumes\t\n")
		for _, p := range snap.Ports {
			if r := p.Regulation; r != nil {
				fmt.Fprintf(tw, "%d\t%s\t%t\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", p.Port, p.Channel, r.Advisories, r.Rate,
					r.Rounds, r.Granted, r.Taken, r.FullRounds, r.Limited, r.Backpress, r.Suspends, r.Resumes)
			}
		}
		if err := section(w, tw); err != nil {
			return err
		}
	}
	if l := snap.L2; l != nil {
		a, r := &l.Switch, &l.Resolver
		fmt.Fprintf(tw, "l2\tarp/ndp in\tanswers\tsuppressed\tto host\theld\thold drops\tsolicits\tresolved\tfailed\treleased\texpired\tbad frames\t\n")
		fmt.Fprintf(tw, "\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", a.Frames, a.Replies, a.Suppressed, a.ToHost,
			a.Held, a.HoldDrops, r.SolicitsSent, r.Resolved, r.Failed, r.PendingSent, r.PendingExpired, r.BadFrames)
		if err := section(w, tw); err != nil {
			return err
		}
		if len(l.Routes) > 0 {
			fmt.Fprintf(tw, "route\tremote\tvia\tmac\tstate\theld\t\n")
			for _, x := range l.Routes {
				fmt.Fprintf(tw, "\t%v\t%v\t%s\t%s\t%d\t\n", x.Remote, x.Via, x.MAC, x.State, x.Held)
			}
			if err := section(w, tw); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(tw, "drops\treason\tpackets\t\n")
	for _, d := range snap.Drops {
		if d.Packets != 0 {
			fmt.Fprintf(tw, "%s\t%s\t%d\t\n", d.Dir, d.Reason, d.Packets)
		}
	}
	if err := section(w, tw); err != nil {
		return err
	}
	flows := append([]FlowStats(nil), snap.Flows...)
	sort.SliceStable(flows, func(i, j int) bool {
		return flows[i].PacketsIn+flows[i].PacketsOut > flows[j].PacketsIn+flows[j].PacketsOut
	})
	if maxFlows >= 0 && len(flows) > maxFlows {
		flows = flows[:maxFlows]
	}
	if snap.Regulation != nil {
		fmt.Fprintf(tw, "flow\tport\tkind\ttoken\tadvisory\tpackets in\tbytes in\tpackets out\tbytes out\tqueued\tsuspended\taqm drops\tecn marks\t\n")
	} else {
		fmt.Fprintf(tw, "flow\tport\tkind\ttoken\tadvisory\tpackets in\tbytes in\tpackets out\tbytes out\t\n")
	}
	for _, f := range flows {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t", f.Key, f.Port, f.Kind, f.Token, f.Advisory,
			f.PacketsIn, f.BytesIn, f.PacketsOut, f.BytesOut)
		if snap.Regulation != nil {
			fmt.Fprintf(tw, "%d\t%t\t%d\t%d\t", f.Queued, f.Suspended, f.AQMDrops, f.ECNMarks)
		}
		fmt.Fprintf(tw, "\n")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write flowswitch stats: %w", err)
	}
	if len(flows) < len(snap.Flows) {
		if _, err := fmt.Fprintf(w, "(%d more flows)\n", len(snap.Flows)-len(flows)); err != nil {
			return fmt.Errorf("write flowswitch stats: %w", err)
		}
	}
	return nil
}

// section ends one table: it flushes the tabwriter (so each table aligns on
// its own) and writes a blank line.
func section(w io.Writer, tw *tabwriter.Writer) error {
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write flowswitch stats: %w", err)
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return fmt.Errorf("write flowswitch stats: %w", err)
	}
	return nil
}
