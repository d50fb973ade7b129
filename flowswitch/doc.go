// Package flowswitch is the nexus's flowswitch (docs/design.md §4–§6): it reads
// input batches from a device port (a netif.Link), steers each packet to the
// flow registered for it, hands each flow's packets to the owner port's
// channel in one batch (flow-based batching, US11606302B2), and checks every
// packet an app transmits against the flows its port owns before it reaches
// the device (anti-spoofing, US20190303221A1).
//
// Receive path, per input batch (RxOnce):
//  1. Read up to Options.Batch frames from the link into buffers the Switch
//     owns (allocated once, by New).
//  2. Parse every frame, then look all their keys up at once
//     (flow.Table.LookupBatch, which overlaps the table's cache misses), a
//     run of one key once; append each packet to its flow's batch queue,
//     found through the entry's Mark (one load, no map).
//  3. Release a flow's queue when it reaches Options.FlowBatchLimit, and every
//     queue at the end of the input batch: one channel.Alloc for the whole flow
//     batch, one copy per packet (the L3 packet, trimmed to its IP length) or
//     per TCP super packet (merge.go), the flow ID stamped in each buffer's
//     user metadata (channel.RxMetaFlowIDOff).
//  4. At the end of the input batch, one channel.Deliver per channel, holding
//     that channel's flow batches in the order they were released; the frames
//     of no flow (ARP included) go to Options.HostLink in one Write, in
//     arrival order; without a host link they are counted as kept by the
//     kernel (KernelKept) when the link is a netif.KernelTap (the kernel
//     has its own copy), else dropped and counted (NoFlow).
//
// Fragments and ICMP errors (frag.go): the input batch's IP fragments go to
// a reassembler (package reassembly: bounded, timed out, overlaps
// dropped) once the batch's other packets are queued; a datagram it
// completes is steered by its first fragment's ports and delivered to
// the flow's app as its fragments, all or none, or goes where unclaimed
// frames go. An ICMP error is steered by the flow it quotes. With
// Options.AnswerAsHost (answer.go), a packet of no flow to the switch's
// addresses is answered as a host would (echo reply, RST, port
// unreachable), rate-limited.
//
// Transmit path (tx.go): each packet and its flow ID are copied out of the
// app's memory before any check, every refusal is counted by reason, and the
// passing packets go to the link (or Options.TxQueue, with their flow token
// and advisory index, or the AQM). A port's last flow is cached with a
// packet.Template of its headers, so most packets skip the full parse and
// lookup. The host link's frames (the kernel's own traffic) go to the
// device unchecked. A TCP super packet with a segmentation size in its
// metadata passes the same checks and travels whole to a link that takes
// it (netif.SuperPacketLink), or is cut into MTU segments right before
// the device write or the AQM (txgso.go).
//
// L2 (l2.go): on an Ethernet link without a static DstMAC, the switch
// resolves each transmitted packet's next hop through a neigh.NextHops:
// neigh.Routes, which follows the kernel sharing the link (its routes and
// neighbour table), or neigh.Resolver, which speaks ARP and NDP itself (ARP
// and NS/NA frames then go to it, not to the flows). A packet whose next
// hop is not known yet waits in the resolver, bounded, until it is.
//
// Regulation (regulation.go, Options.Regulation, docs/design.md §7): the transmit
// queue is an fq_codel AQM paced at Options.LinkRate; flows of ports whose
// apps honour advisories are suspended (channel advisory table, events)
// instead of dropped, and back-pressured at the queue's high-water mark;
// TxSync serves the ports round robin with budgets; receive batches are
// held adaptively under load; a port whose RX ring stalls is defunct.
// Timed work (pacing, held frames, neighbour polls, stall checks) runs in
// Service, which Round calls each round and which a caller driving the
// datapath step by step must call too, sleeping no longer than it says.
//
// Invariants, each checked by the tests:
//   - Packets of one flow reach the app in the order they arrived.
//   - At most one Deliver call, and so at most one notification, per channel
//     per input batch.
//   - A full RX ring tail-drops only the excess of its own channel (counted
//     by the channel as RxDrops); other channels are not affected.
//   - A TCP listener flow's packets never take the last quarter of its
//     channel's RX ring nor half of its pool; one source's packets keep
//     their order; a heavy source cannot crowd out a light one
//     (rxlisten.go).
//   - A packet of no registered flow never reaches a user channel.
//   - A packet the transmit checks refuse never reaches the link, and the
//     link gets the very bytes that were checked.
//   - No allocation per packet (or per batch) in steady state, with L2
//     resolution and Regulation too.
//   - ARP and NDP never reach an app; an unresolved packet never reaches
//     the wire without its next hop's MAC.
//   - A fragment reaches an app only as part of a whole datagram of one
//     of its flows, whose fragments tile it without gap or overlap; a
//     later fragment an app sends leaves only as part of a datagram whose
//     first fragment passed the checks on a flow it owns.
//   - With Regulation, one app's burst changes neither another app's
//     loss nor, by more than the AQM target, its latency; a flow of an app
//     that honours advisories loses nothing at the queue.
//
// The datapath loop is not here: nexus.Nexus's worker runs it, calling
// Round once per round (then syncing the ports' channels and sleeping on
// the links and the apps), and benches and tests use that nexus or Round.
//
// Concurrency. Every method takes the switch's lock, so all are safe from
// any goroutine. The datapath methods (Round, RxOnce, TxOnce, TxSync,
// HostOnce, Service) belong to one worker goroutine, which takes the lock
// once per step (Round: once per round); the control methods (AddPort,
// AddPortWith, RemovePort, Register, Teardown, Stats, Snapshot, Do) may run
// from others meanwhile, and take effect between two steps, when no flow has
// packets queued (so a port event finds its flows' queues already
// released). The flow table and the mutable parts
// of its entries (counters, state) are guarded by the same lock: read them
// in Do. An entry's identity (ID, Token, AdvisoryIndex, Port, Key, Kind)
// never changes and may be read anywhere.
//
// Ports: port 0 is the host port (HostPort); AddPort binds a user port to a
// channel and never reuses an ID. RemovePort, which the worker calls when
// it finds a port's channel defunct, tears the port's flows down. Packets an app still sends
// on a flow torn down by Teardown count as TxDrops.TornDown.
package flowswitch
