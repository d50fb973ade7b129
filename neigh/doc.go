// Package neigh resolves next hops for the nexus on Ethernet links
// (docs/design.md §6.4: the nexus, not the app, writes the L2 header;
// §8b: real networks). NextHops is what the flowswitch asks of it; two
// kinds implement it:
//
//   - Routes, for a link the kernel shares (AF_XDP, AF_PACKET: what
//     skylane serve and skylane nexus run on). It follows the kernel: a
//     route per remote (its next hop: the gateway of the kernel's route,
//     or the remote itself on-link), cached RouteTTL (600 s, as Skywalk
//     ages its flow routes) and asked again on any routing event; and the
//     kernel's neighbour table, mirrored from its events, for the MAC of
//     each next hop (IPv4 by ARP, IPv6 by NDP, link-local routers
//     included). Misses are asked of the kernel, which resolves them by
//     its own ARP and NDP. neigh/kernel does the netlink side.
//   - Resolver, for a link no kernel shares (the memif tests): it sends
//     ARP requests and neighbour solicitations itself and answers for the
//     nexus's addresses, from the frames the switch hands it.
//
// Why follow the kernel rather than resolve alone where it shares the
// link: the nexus uses the kernel's own addresses there, and the kernel
// keeps answering ARP and NDP for them (the steering program passes those
// frames to it, and XDP cannot give one frame to both). A second resolver
// would never see the answers, would double every request on the wire and
// could disagree with the kernel's table; and the kernel alone knows the
// routes (default gateway, more specific routes, policy rules). Following
// its tables over netlink costs one event per change, and asking it to
// resolve (RTM_NEWNEIGH with NTF_USE) makes it probe as it would for a
// packet of its own, so a stale entry in use is confirmed and a replaced
// host's new MAC is learnt the moment it speaks (its ARP request or NS).
//
// Invariants (each tested):
//   - A packet leaves only with the MAC the kernel (or, for Resolver, an
//     answer) gave for its next hop: never a zero or guessed MAC. Packets
//     waiting are held in a bounded queue, per address and in all; a
//     refusal, a timeout (ResolveTimeout, 3 s: the kernel has given up
//     by then) and an unreachable remote are each counted.
//   - Held packets of one remote leave in the order they came.
//   - Wire formats (ParseARP/PutARP, ParseNDP/PutNDP) read and write whole
//     frames without allocating, bounds-checked (fuzzed), agreeing with
//     gopacket.
//   - Time is injected (Options.Now, RoutesOptions.Now); this package does
//     no I/O and starts no goroutine. Both kinds are safe for concurrent
//     use (one mutex each).
//
// How the switch drives a NextHops, on each Ethernet link:
//
//  1. Every received frame goes through HandleFrame first. If it returns
//     consumed (Resolver: ARP, NS/NA), the frame goes no further, and
//     reply[:n], if n > 0, is written to the link. Routes consumes none:
//     ARP and NDP belong to the kernel.
//  2. To send an IP packet, the switch calls Resolve(destination): with a
//     MAC it writes the Ethernet header itself; without one it calls
//     Hold(destination, packet), which copies the packet.
//  3. Poll, after HandleFrame consumed a frame, at least every
//     PollInterval, and every PendingPoll while Waiting (Routes' answers
//     come from the kernel at any time), returns frames to write:
//     solicitations due (Resolver) and held packets whose next hop got
//     resolved, with their Ethernet header.
//
// Resolver's cache has the states of RFC 4861 §7.3.2 in small: Incomplete
// (asked, no answer yet), Reachable (confirmed within ReachableTime) and
// Stale (usable; the next use sends a unicast probe, and an entry whose
// probes go unanswered is removed). Routes maps the kernel's NUD states
// onto the same names (and Failed).
package neigh
