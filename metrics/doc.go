// Package metrics exports a flowswitch's counters to Prometheus: a
// prometheus.Collector built from a snapshot function (usually
// Switch.Snapshot, see SwitchSnapshot), Handler for a registry, and Serve,
// a small /metrics server that stops with its context.
//
// Metrics, with the default namespace "skylane". Counters count since the
// switch's New and end in _total; the others are gauges.
//
// Switch-wide:
//
//	rx_packets_total, rx_batches_total, rx_flow_batches_total,
//	rx_deliveries_total, rx_delivered_packets_total,
//	rx_super_packets_total, rx_merged_packets_total,
//	host_delivered_packets_total (host in), host_tx_packets_total (host out),
//	kernel_passed_packets_total (left to the kernel's stack: not drops),
//	tx_packets_total, tx_bytes_total, ports_removed_total,
//	active_flows, ports, rx_reassembled_datagrams_total,
//	fragments_held_bytes, rx_icmp_errors_total, answers_as_host_total
//
// The device link's own counters (netif.Stats; not link_*, which are the
// AQM's writes to it):
//
//	netif_rx_packets_total, netif_rx_bytes_total, netif_rx_drops_total,
//	netif_tx_packets_total, netif_tx_bytes_total, netif_tx_drops_total,
//	netif_kernel_passed_packets_total
//
// Histograms (flowswitch.SnapshotHists): rx_batch_size (frames per input
// batch), rx_super_packet_bytes (each super packet delivered) and, with
// Regulation, aqm_sojourn_seconds (each packet's wait in the AQM).
//
// Drops, one family with every reason of the snapshot, zero or not:
//
//	drops_total{dir="rx"|"tx", place="switch"|"port"|"link", reason}
//
// Parse drops are reasons of their own (rx, parse_<packet.Reason>). A
// frame of no flow on a link the kernel also reads (AF_PACKET), or one the
// steering program passed (AF_XDP), is not a drop but
// kernel_passed_packets_total.
//
// Per user port, labels {port, channel}; the port's own counters, then its
// channel's (channel.Counters):
//
//	port_flows, port_rx_delivered_packets_total, port_rx_ring_drops_total,
//	port_tx_packets_total, port_tx_bytes_total, port_tx_drops_total,
//	channel_rx_packets_total, channel_rx_bytes_total,
//	channel_tx_packets_total, channel_tx_bytes_total,
//	channel_alloc_failures_total, channel_notifications_total,
//	channel_wakeups_total, channel_reclaimed_buffers_total,
//	channel_alloc_handed_buffers_total,
//	channel_segments_added_total, channel_segments_freed_total
//
// With Options.Apps, per exported port, port_info{port, channel, app, uid}
// (value 1): join it to the port series on {port, channel} for their app.
// Past Options.MaxPorts ports (default 256), the quietest are folded into
// one set of port series labelled port="other", channel="other", summed.
//
// With Options.MaxFlows > 0, per flow, labels {port, flow (the key), kind}:
//
//	flow_rx_packets_total, flow_rx_bytes_total,
//	flow_tx_packets_total, flow_tx_bytes_total
//
// When the switch has Regulation (Snapshot.Regulation set), switch-wide:
//
//	aqm_queued_packets, aqm_queued_bytes, aqm_queued_flows,
//	aqm_enqueued_packets_total, aqm_dequeued_packets_total,
//	aqm_ecn_marks_total, aqm_shared_packets_total,
//	advisory_suspends_total, advisory_resumes_total, advisory_errors_total,
//	link_tx_packets_total, link_tx_bytes_total, link_paced_total,
//	host_queued_packets_total, tx_rounds_total, tx_rate_limited_total,
//	tx_backpressured_total, rx_held_batches_total, rx_mitigation_level,
//	rx_mitigation_packets_per_second, stalled_ports_total
//
// per port {port, channel} (PortRegStats):
//
//	port_advisories (1: the app honours advisories),
//	port_tx_rate_limit_bytes_per_second (0: no cap),
//	port_tx_granted_packets_total, port_tx_taken_packets_total,
//	port_tx_rounds_total, port_tx_full_rounds_total,
//	port_tx_rate_limited_total, port_tx_backpressured_total,
//	port_advisory_suspends_total, port_advisory_resumes_total
//
// and per exported flow {port, flow, kind}: flow_aqm_queued_packets,
// flow_suspended (1 or 0), flow_aqm_drops_total, flow_ecn_marks_total (the
// last two count since the flow's queue slot took it, so they may reset).
//
// When the switch resolves neighbours (Snapshot.L2 set), the switch's side:
//
//	l2_frames_total, l2_replies_total, l2_suppressed_replies_total,
//	l2_to_host_frames_total, l2_held_packets_total, l2_poll_frames_total
//
// and the resolver's:
//
//	neigh_replies_sent_total, neigh_solicits_sent_total, neigh_resolved_total,
//	neigh_failed_total, neigh_pending_queued_total, neigh_pending_sent_total,
//	neigh_pending_overflow_total, neigh_pending_expired_total,
//	neigh_bad_frames_total, neigh_route_queries_total,
//	neigh_route_changes_total, neigh_no_route_total, neigh_mac_changes_total,
//	neigh_routes_evicted_total, neigh_routes_expired_total, neigh_routes,
//	neigh_pending_packets
//
// (with a neigh.Routes, which follows the kernel, neigh_solicits_sent_total
// counts the resolutions asked of the kernel, and the replies and bad
// frames stay zero)
//
// Each packet drop is exported once, in drops_total: the channel's RxDrops
// is port_rx_ring_drops_total (PortStats.RxRingDrops is a copy of it), and
// the AQM's and the resolver's drops, and the device's refusals, are the
// tx reasons aqm_*, neigh_hold_full, neigh_expired and device_full (the link's TxDrops:
// netif_tx_drops_total counts the same frames), and the link's receive
// losses are link_rx_lost (netif_rx_drops_total, the same). The channel's TX
// counters count what the switch took from the TX ring, the port's what
// passed the checks.
//
// Invariants, each checked by the tests:
//   - One snapshot per scrape: Collect calls the snapshot function exactly
//     once and builds every sample from that one copy, so the samples of a
//     scrape agree with each other (the ports' ring drops sum to the
//     rx_ring_full drops, say). The collector holds no lock of its own; the
//     only lock taken is the one the snapshot function holds while it
//     copies (Switch.Snapshot: the switch's lock, in time proportional to
//     the flows), and the conversion runs after it is released.
//   - Bounded cardinality: the switch-wide series are fixed; the drop
//     series are the snapshot's fixed list of reasons; the port series are
//     one set per live user port (port IDs are never reused, so a removed
//     port's series just end), at most MaxPorts sets; per-flow series are off unless
//     Options.MaxFlows > 0, and then at most MaxFlows flows are exported,
//     the busiest (packets in + out) first. The regulation and neighbour
//     series exist only when the snapshot has those sections.
//   - Counters are exported as counters, gauges as gauges and histograms
//     as histograms, and every name passes promlint.
//   - Describe sends a fixed set of descriptors, so the collector is a
//     checked one: the registry verifies every sample against them.
//
// A snapshot error fails the scrape (the registry's Gather returns it, and
// Handler answers 500), so Prometheus sees the target down rather than a
// scrape with series missing.
package metrics
