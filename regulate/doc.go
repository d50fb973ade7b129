// Package regulate holds the nexus's traffic regulation for bursty
// conditions (docs/design.md §7, after US20190306281A1): the transmit queue of a
// netif (an fq_codel-style AQM, RFC 8290 with CoDel per RFC 8289), the flow
// advisory policy that asks a sender to pause instead of losing its packets,
// a token bucket per channel, a round robin over channels, adaptive receive
// batching with stall detection, and Jain's fairness index.
//
// Everything here is a plain data structure driven by its caller: time comes
// in as int64 nanoseconds of one monotonic clock (the caller's choice of
// epoch), nothing starts a goroutine, reads the clock, sleeps or keeps global
// state, so every behaviour replays exactly under a synthetic clock. No type
// is safe for concurrent use: each belongs to one goroutine of the nexus.
//
// Invariants, each checked by the tests and the fuzz target:
//
//   - No input panics, whatever the frame bytes, tags, sizes or clock.
//   - The Queue never holds more than Options.Limit packets, and accounts
//     for every packet it accepted: Enqueued = Dequeued + CoDelDrops +
//     OverflowDrops + Forgotten + Len().
//   - Packets of one flow leave in the order they arrived (drops make gaps,
//     never reorderings).
//   - Enqueue and Dequeue allocate nothing: frames are copied into a slab
//     sized by New (Limit + Batch frames of the link's maximum frame size).
//   - A flow with an advisory is never dropped by CoDel or early drop: it is
//     suspended instead, and resumed when its queue has drained. Only queue
//     overflow (the last resort) drops its packets. A flow without one is
//     dropped at Enqueue while the same policy would hold it back.
//   - A frame the queue cannot parse is still queued (in a shared flow);
//     ECN marking reads and writes only bytes inside the frame's IP header.
package regulate
