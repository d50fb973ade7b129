package flowswitch

import (
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Snapshot is a copy of every counter of the switch at one instant: the
// totals, each port with its channel's ring counters, each flow, and one
// counter per drop reason. It is plain data with JSON tags, for `skylane`
// to print (WriteTable) or encode.
type Snapshot struct {
	Totals SnapshotTotals `json:"totals"`
	Ports  []PortStats    `json:"ports"`
	Flows  []FlowStats    `json:"flows"`
	// Drops has every drop reason, in the order the checks run, zero or
	// not: RX parse reasons, then the other RX reasons, then every TX
	// check.
	Drops []Drop `json:"drops"`
}

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
	HostTx        uint64 `json:"host_tx"`
	TxPackets     uint64 `json:"tx_packets"`
	TxBytes       uint64 `json:"tx_bytes"`
	PortsRemoved  uint64 `json:"ports_removed"`
	ActiveFlows   int    `json:"active_flows"`
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
}

// Drop is one drop reason's counter.
type Drop struct {
	Dir     string `json:"dir"`    // "rx" or "tx"
	Reason  string `json:"reason"` // snake_case, stable
	Packets uint64 `json:"packets"`
}

// Snapshot returns the switch's counters. It takes the switch's lock, so it
// is safe while Run runs; it allocates (it is a control-plane call) and
// takes time in proportion to the number of flows.
func (s *Switch) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.statsLocked()
	snap := Snapshot{Totals: SnapshotTotals{
		Packets: st.Packets, Batches: st.Batches, FlowBatches: st.FlowBatches,
		Deliveries: st.Deliveries, Delivered: st.Delivered,
		SuperPackets: st.SuperPackets, Merged: st.Merged,
		HostDelivered: st.HostDelivered, HostTx: st.HostTx,
		TxPackets: st.TxPackets, TxBytes: st.TxBytes,
		PortsRemoved: st.PortsRemoved, ActiveFlows: s.table.Len(),
	}}
	flows := map[flow.PortID]int{}
	s.table.ForEach(func(e *flow.Entry) bool {
		c := e.Counters()
		id := e.ID()
		snap.Flows = append(snap.Flows, FlowStats{
			Port: e.Port(), Key: e.Key().String(), Kind: e.Kind().String(), ID: hex.EncodeToString(id[:]),
			Token: e.Token(), Advisory: e.AdvisoryIndex(),
			PacketsIn: c.PacketsIn, BytesIn: c.BytesIn, PacketsOut: c.PacketsOut, BytesOut: c.BytesOut,
		})
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
		snap.Ports = append(snap.Ports, PortStats{
			Port: p.id, Channel: p.ch.Name(), Flows: flows[p.id],
			Delivered: p.delivered, RxRingDrops: c.RxDrops,
			TxPackets: p.tx.packets, TxBytes: p.tx.bytes, TxDrops: p.tx.drops,
			Ring: c,
		})
	}
	snap.Drops = drops(&st)
	return snap
}

// drops lists every drop reason of st, in check order.
func drops(st *Stats) []Drop {
	var out []Drop
	rx := func(reason string, n uint64) { out = append(out, Drop{"rx", reason, n}) }
	tx := func(reason string, n uint64) { out = append(out, Drop{"tx", reason, n}) }
	for r := packet.Reason(1); r < packet.NumReasons; r++ {
		rx("parse_"+r.String(), st.ParseDrops[r])
	}
	rx("no_flow", st.NoFlow)
	rx("host_full", st.HostDrops)
	rx("oversize", st.Oversize)
	rx("alloc_fail", st.AllocFails)
	rx("rx_ring_full", st.RxRingDrops)
	d := &st.TxDrops
	tx("length", d.Length)
	tx("mtu", d.MTU)
	tx("parse", d.Parse)
	tx("ipv4_options", d.IPv4Options)
	tx("src_addr", d.SrcAddr)
	tx("src_port", d.SrcPort)
	tx("proto", d.Proto)
	tx("no_flow", d.NoFlow)
	tx("not_owner", d.NotOwner)
	tx("flow_id", d.FlowID)
	tx("torn_down", d.TornDown)
	tx("listener_data", d.ListenerData)
	tx("syn_rate", d.SYNRate)
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
	fmt.Fprintf(tw, "flow\tport\tkind\ttoken\tadvisory\tpackets in\tbytes in\tpackets out\tbytes out\t\n")
	for _, f := range flows {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", f.Key, f.Port, f.Kind, f.Token, f.Advisory,
			f.PacketsIn, f.BytesIn, f.PacketsOut, f.BytesOut)
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
