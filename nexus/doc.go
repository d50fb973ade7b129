// Package nexus is the privileged side of Skylane as a library (docs/design.md §1):
// a Nexus owns one device (a netif.Link) and one flowswitch.Switch, runs
// them in a single worker goroutine, makes a channel for each application
// port, and serves the control requests of applications: open a port,
// register or tear down a flow, close the port.
//
// The worker is the only goroutine that touches the Switch, the flow table
// and the nexus end of every channel. Everything else reaches it through
// requests (Port.Register, Port.Teardown, Port.Close, Nexus.Stats) that it
// runs between two datapath rounds, so the control path needs no lock in
// the Switch and never races the datapath.
//
// Wake-ups (the worker never polls on a timer to find work; its timers are
// the reaper's, once per ReapInterval, and the switch's timed work):
//
//   - The links (the device, and the host link toward the kernel's stack
//     when there is one): a link waiter goroutine per link blocks in
//     Link.Wait while the worker is parked, and hands the right to Read
//     back when frames arrive. The worker reads a link only while it holds
//     that right, so a link's reader role (Read, Wait) is never used by two
//     goroutines at once. A link that says itself when frames arrive
//     (netif.Notifier: an unpaced memif wire) has no waiter: the parked
//     worker keeps the right and selects on the link's channels, one
//     goroutine hand-off fewer per wake-up.
//   - An app in this process (OpenPort) kicks its port after it sends,
//     frees, or runs short of buffers (Port.Kick): an atomic load while the
//     worker is busy, one Go channel send when it sleeps. The worker says it
//     is about to sleep, runs one more round to catch what was committed
//     before the app could see that, and only then sleeps: the rings'
//     arm-then-recheck order, so no kick is lost and a busy pair makes no
//     system call and no channel operation.
//   - An app in another process is woken through its channel's eventfd: a
//     port waiter goroutine blocks in channel.Channel.Wait (need-wakeup flags
//     armed) while the worker sleeps. The worker does not touch that channel
//     meanwhile: on every wake-up it first kicks and joins every armed waiter
//     ("disarm"), and only then runs the datapath or a request. Such ports
//     are opened by OpenRemotePort and handed to apps over a Unix socket
//     by package nexus/control.
//   - Control requests arrive on a Go channel the parked worker selects on.
//   - The switch's timed work (flowswitch.Switch.Service: the regulation
//     layer's paced queue, receive batches held for adaptive batching,
//     stall checks, neighbour resolution) runs every round, and the parked
//     worker's timer is set to when Service says it is next due.
//   - A flowswitch TxQueue (the regulation layer, docs/design.md §7) is flushed once
//     per round. It has no way yet to wake a parked worker for packets it
//     holds back (pacing): until it has one, it must let everything go in
//     Flush, or the worker must be kept awake by traffic.
//   - Apps are woken in reverse by their bell: the worker rings a port's bell
//     when packets were delivered or events (segments added or removed, flow
//     advisories) put on the event ring, or, for an app whose last Alloc,
//     Send or Free came up short, when any of the channel's counters
//     changed (TX slots taken, buffers handed or reclaimed), and the app
//     said it is about to sleep (Port.Wait), with the same arm, re-check,
//     sleep order. A busy app is never rung.
//   - Busy-poll (Options.BusyPoll, off by default): a worker whose round
//     found nothing runs rounds for up to that budget, yielding between
//     them, before it parks.
//
// Invariants:
//
//   - While a port waiter is inside Channel.Wait the worker does not touch
//     that channel (see above).
//   - Every goroutine has an owner that stops it: the worker is stopped by
//     Close; the link waiter and the port waiters by the worker, which joins
//     them before it returns. Close returns only after all of them exited,
//     every channel was closed and the link was closed.
//   - A port's flows are the flows it registered and did not tear down;
//     closing the port tears them all down before its channel is closed, so
//     no packet is ever steered to a closed channel.
//   - If the link steers flows (netif.FlowSteerer: AF_XDP, AF_PACKET with
//     steering), a flow is steered from before Register returns until it is
//     torn down, on every path: Teardown, Port.Close, a defunct channel, a
//     failed link and Close. It is steered by an entry of its own in the
//     device's steering map, or, a connected flow under a listener, by the
//     listener's entry (the programs look the listener shapes up after the
//     5-tuple; steer.go): such a flow gets its own entry before its
//     listener's goes. A link opened without steering, or a key it cannot
//     steer (netif.ErrSteeringOff, netif.ErrNotSteerable), leaves the
//     kernel seeing the flow too; a full map (netif.ErrSteerFull) fails
//     Register as a flow limit (flow.ErrTooManyFlows), and any other
//     steering error fails it too, the flow torn down.
//   - With Options.Reserve (a kernel sharing the device), a listener flow's
//     port is reserved in the kernel's stack from before it is steered
//     until it is torn down, on the same paths as its steering; a
//     reservation that fails fails Register. Only the port that owns the
//     flow gets its host listener (Port.HostListener).
//   - A flow's advisory entry (docs/design.md §7) is clear when Register hands it
//     out, whatever the flow that held the slot before left in it. Only the
//     worker writes advisories: the switch's regulation layer as its queue
//     builds and drains, and Advise for tests and operators.
//   - Nothing an app sends in a request is trusted: keys and kinds are
//     checked by the flow table, and an app can only tear down its own flows.
//   - A takeover (handover.go, package nexus/takeover) freezes the worker
//     between two rounds: it serves requests but runs no datapath and arms
//     no waiter, and the device's reader role is the worker's. Thaw
//     resumes exactly there; Abandon closes every descriptor without
//     touching shared memory, the steering map or the program. A nexus
//     that takes over starts frozen and writes nothing to an adopted
//     channel but what the old one wrote there until its Thaw.
package nexus
