// Package flowswitch is the nexus's flowswitch (DESIGN §5): it reads input
// batches from a device port (a netif.Link), steers each packet to the flow
// registered for it, and hands each flow's packets to the owner port's channel
// in one batch (flow-based batching, US11606302B2).
//
// Receive path, per input batch (RxOnce):
//  1. Read up to Options.Batch frames from the link into buffers the Switch
//     owns (allocated once, by New).
//  2. Parse each frame and look its key up in the flow table, reusing the
//     previous packet's entry when the key repeats; append the packet to that
//     flow's batch queue.
//  3. Release a flow's queue when it reaches Options.FlowBatchLimit, and every
//     queue at the end of the input batch: one channel.Alloc for the whole flow
//     batch, one copy per packet (the L3 packet, trimmed to its IP length).
//  4. At the end of the input batch, one channel.Deliver per channel, holding
//     that channel's flow batches in the order they were released.
//
// Invariants, each checked by the tests:
//   - Packets of one flow reach the app in the order they arrived.
//   - At most one Deliver call, and so at most one notification, per channel
//     per input batch.
//   - A full RX ring tail-drops only the excess of its own channel (counted
//     by the channel as RxDrops); other channels are not affected.
//   - A packet of no registered flow never reaches a user channel.
//   - No allocation per packet (or per batch) in steady state.
//
// A Switch is owned by one goroutine: RxOnce, Run, AddPort, Register and
// Stats must not run concurrently. Stats is read by that goroutine, or after
// Run returned.
//
// The transmit path (tx.go) copies each packet and its flow ID out of the
// app's memory before any check and counts every refusal by reason.
//
// In-order TCP data of one flow batch leaves as one super packet (merge.go,
// DESIGN §5.4), its checksums derived from the segments' own.
//
// TODO(skylane): next come the flow token and advisory index on transmit, the kernel host port for
// packets of no flow (today they are dropped and counted as NoFlow), flow
// metadata stamping into the user metadata region, and the port-event release
// condition (flow torn down, channel closed).
package flowswitch
