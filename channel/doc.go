// Package channel binds one application to one nexus port through shared
// memory (docs/design.md §3): five rings (TX, RX, alloc, free, event), the app's
// packet pool, a flow-advisory table and statistics, all in memfds the
// nexus made. Channel is the nexus's end, App the application's; the same
// code serves an app in this process (Channel.AttachLocal) and one in
// another process (Channel.Send over a Unix socket, Receive on the other
// side).
//
// Who writes what:
//
//	TX ring     app produces packets to send;  nexus consumes
//	RX ring     nexus produces received packets; app consumes
//	alloc ring  nexus hands empty buffers ahead; app consumes
//	free ring   app gives buffers back;         nexus consumes
//	event ring  nexus posts segment changes, advisories, recalls, defunct; app consumes
//	advisories, stats, segment bitmap: nexus writes; apps get read-only descriptors
//	(files only the nexus's user may reopen), so the next nexus can take them over
//
// Invariants:
//   - The nexus never trusts shared memory: ring indices are validated on
//     every refresh (forward only, within bounds), every slot is copied
//     before it is checked, and every buffer index must be inside the pool
//     and held by the app (pool.App) — not free, not the nexus's, not in a
//     released segment. Any violation defuncts this channel only: the app
//     is told (state word, event, signal) and gets a *DefunctError from
//     every call; the nexus side frees all of the channel's memory.
//   - A buffer is in exactly one place: the pool, the nexus, or the app
//     (alloc/RX ring or its hands). Counters and tests check the sum.
//   - Each end is owned by one goroutine. The calls that cross goroutines
//     are Kick, Channel.Wait, App.Interrupt (which ends the owner's
//     App.Wait/WaitFor) and App.Admissible. A busy pair makes no system
//     call: eventfds are signalled only when the other side armed its
//     need-wakeup flag, and an app waits only for the rings it names
//     (App.WaitFor), so an idle app's full alloc ring does not wake it.
//   - Neither side has to poll for the other: an app short of anything
//     can sleep until the nexus provides it, packets (WaitRX), buffers
//     (WaitAlloc), events, and room on a full TX or free ring
//     (WaitTxRoom, WaitFreeRoom: the ring's FlagNeedRoom, answered by the
//     Sync after the nexus took from that ring); the nexus sleeps in
//     Channel.Wait until the app kicks. A loop that polls must give the
//     CPU up when its peer is late (sched_yield, then sleep): an end in
//     another process may be waiting for that very CPU, and a poll that
//     holds it for its time slice moves one ring's worth per slice.
//   - The advisory table is read-only to the app and changes only with an
//     event posted after it: an app that reads an entry after an
//     EventAdvisory sees the change. App.Admissible bounds-checks the index
//     and reads an entry outside the table as admissible.
//   - Buffer segments appear and disappear at run time: the app maps a
//     segment when it first meets one of its buffers (or the event says it
//     was added) and unmaps it when told it was released and the segment
//     bitmap confirms it is still inactive.
//   - A channel's nexus end can be handed to another nexus process
//     (Export, Adopt, Abandon; handover.go) without the app noticing: the
//     new end goes by the old end's private indices and the pool's
//     nexus-only buffer states, never by what the app wrote.
//   - The alloc ring holds the app's working set (docs/design.md §2: 8 buffers at
//     first, +50% when the app runs it dry, −25% after 2 s with a quarter
//     unclaimed). The nexus cannot take back what it produced, so what an
//     idle app leaves in the ring beyond a shrunk working set for a whole
//     window is recalled (EventRecall; App.Events hands it back through the
//     free ring), one recall outstanding at a time: an idle app does not
//     pin pool segments for ever, and one that reads no events gets one
//     event, not one per window.
package channel
