// Package neigh is the nexus's neighbour resolution for Ethernet links
// (docs/design.md §6.4: the nexus, not the app, writes the L2 header): ARP (RFC 826)
// for IPv4 and neighbour discovery (RFC 4861) for IPv6. It has three parts:
//
//   - Wire formats: ParseARP/PutARP and ParseNDP/PutNDP read and write
//     whole Ethernet frames, without allocating, bounds-checked (fuzzed),
//     agreeing with gopacket (tested).
//   - A resolver cache, IP → MAC, with the states of RFC 4861 §7.3.2 in
//     small: Incomplete (asked, no answer yet), Reachable (confirmed within
//     ReachableTime) and Stale (usable; the next use sends a unicast probe,
//     and an entry whose probes go unanswered is removed). Packets that wait
//     for an Incomplete entry are held, at most PendingPerAddr per address
//     and MaxPending in all, and dropped (counted) when resolution fails
//     after MaxProbes solicitations RetransTime apart.
//   - A responder: ARP requests and neighbour solicitations for the
//     addresses the nexus owns (which the kernel may not have) are answered.
//
// How the nexus drives it, on each Ethernet link (one Resolver per link):
//
//  1. Every received frame goes through HandleFrame first. If it returns
//     consumed, the frame was ARP or NS/NA: it goes no further (no app sees
//     L2 control traffic), and reply[:n], if n > 0, is written to the link.
//  2. To send an IP packet, the nexus calls Resolve(next hop): with a MAC
//     it writes the Ethernet header itself; without one it calls Hold(next
//     hop, packet), which copies the packet.
//  3. Poll, after HandleFrame consumed a frame and at least every
//     PollInterval, returns frames to write: solicitations due and held
//     packets whose address got resolved, with their Ethernet header.
//
// Time is injected (Options.Now), so the package does no I/O and starts no
// goroutine; a Resolver is safe for concurrent use (one mutex).
package neigh
