// Package stack binds gVisor's netstack to a Skylane channel (docs/design.md §8): an
// Endpoint is a netstack LinkEndpoint whose wire is the app end of a nexus
// port. Raw IP packets go both ways (the nexus writes the L2 header).
//
// Receive: one service goroutine takes up to Options.RxBatch packets from
// the RX ring per poll, copies each into a netstack PacketBuffer (the one
// copy netstack needs: it keeps received data until the application reads
// it), gives the buffers back in one Free, and then delivers the batch to
// netstack. Super packets the flowswitch merged (up to its merge limit, 16
// KiB by default) are delivered whole: netstack accepts IP packets larger
// than the link MTU on receive, so no GRO is needed in the stack.
//
// Transmit: WritePackets copies each packet into channel buffers (the one
// copy out of netstack's memory, which keeps sent data for retransmission),
// writes the packet's flow ID into the buffer's user metadata
// (channel.TxMetaFlowIDOff) and puts the batch on the TX ring with one
// Send. The endpoint offers host GSO: netstack hands down TCP segments of up
// to Options.GSOMaxSize bytes (at most the channel's buffer size) with a
// partial checksum, and the endpoint puts each whole in one buffer, as a
// super packet with its MSS as the segmentation size
// (channel.TxMetaSegSizeOff): the nexus hands it whole to a link that
// takes super packets, or cuts it into MTU segments right before the
// device. Checksums (with Options.ChecksumOffload): the endpoint
// declares checksum offload, so netstack computes no TCP or UDP checksum
// and each packet leaves marked channel.FlagCsumPartial; the nexus
// completes it only before a device that needs it, and over an in-memory
// wire the far nexus marks it channel.FlagCsumValid, which the far
// endpoint trusts; a packet not so marked (from a device) is verified by
// the endpoint (packet.ChecksumsValid) and dropped when it fails
// (Stats.RxBadChecksum). Without it netstack computes and verifies them,
// and the endpoint completes a super packet's TCP checksum;
// whoever cuts a super packet (netif/gso, a kernel) computes each
// segment's own.
//
// Flows follow the stack: every packet leaves with the flow ID of the flow
// it belongs to, or does not leave. The owner (package client) registers
// listener flows before listening and 5-tuple flows before dialing
// (Register). Handshakes of accepted connections leave on the listener's
// flow (it may send SYN-ACKs and RSTs), so a half-open connection costs
// the nexus nothing; the 5-tuple of an accepted connection (or of a UDP
// reply) is registered on demand, in batches, by the registrar goroutine,
// its packets held until then, so netstack never waits for the nexus
// (registrar.go). A reaper tears down TCP flows whose connection is gone
// (Options.Alive).
//
// Flow advisories (docs/design.md §7) are honoured: Port.Register returns each
// flow's entry in the channel's advisory table, and a packet of a flow the
// nexus suspended is held in the endpoint, per flow and bounded
// (Options.MaxHeld), instead of reaching the TX ring; the flow sends what it
// held, in order, once the nexus lets it go (advisory.go). Backpressure
// rather than drops: netstack's TCP sender stops at its window.
//
// Receive windows (window.go). netstack scales its advertised receive
// window (by 2^8 with the client's 8 MiB buffer limit) and rounds it down
// at each ACK, from a new base each time, so the right edge it advertises
// can move back by up to 255 bytes, while the peer may already have sent
// into the part taken back. netstack then refuses every segment from the
// peer whose sequence number lies past the window it last advertised, pure
// ACKs included, and the peer's next sequence number is past it as long
// as the bytes it sent there are lost. Once the window is shut (an echo
// server whose application is blocked writing) or the peer's sender stops
// resending, netstack no longer hears the peer's acknowledgements, its
// send buffer stays full, the application never reads, and the connection
// crawls at retransmission timeouts or dies (gVisor issue 10312, closed
// upstream unfixed). The endpoint sees every segment netstack sends, so it
// keeps per connection the last ACK and right edge netstack advertised and
// the furthest edge it ever did; a pure ACK from the peer past the last
// window but within that furthest edge is handed to netstack renumbered:
// RCV.NXT (the last ACK) when the window is zero, else the window's last
// byte, checksum updated (RFC 9293 §3.10.7.4: valid ACKs must still be
// accepted). Why that holds: netstack's RCV.NXT is the last ACK it sent,
// or past it only until its next ACK, which it sends at once after taking
// data, and never past the last edge; netstack accepts an empty segment at
// RCV.NXT, or anywhere inside an open window, so the renumbered ACK is
// taken: its acknowledgement and SACK blocks are processed, the send side
// drains, the application reads, the window opens and the peer resends
// what was refused. The peer answers each of netstack's retransmissions
// with a pure ACK, so acknowledgements get through at the latest one
// retransmission timeout later. Nothing else is touched: data keeps its
// sequence numbers, and a segment past every edge netstack advertised
// stays unheard. Stats.RxRetractedACKs counts the ACKs renumbered.
//
// Invariants:
//
//   - A packet the nexus would refuse never reaches the TX ring: no flow, a
//     size above the MTU (but for a TCP super packet the nexus takes), a
//     source address that is not the port's. Such a
//     packet is dropped here and counted (Stats), so an honest app never
//     sees a TX drop in the flowswitch.
//   - Every PacketBuffer reference the endpoint takes is released on every
//     path: delivered, sent, dropped, or queued or held and then sent or
//     dropped (a full hold, a torn-down flow, a refused registration, Stop).
//   - A pending flow's packets never reach the TX ring before the nexus
//     registered it; one the nexus refused sends nothing on its own flow,
//     and is handed to Options.Refuse once.
//   - The channel's app end is used under one mutex; the only blocking call,
//     Port.Wait, is made without it, so WritePackets never waits for the
//     receive side.
//   - Packets of one flow leave in the order netstack wrote them: once some
//     packets wait (ring or pool full, or held for a suspension), later ones
//     queue behind them.
//   - Once the endpoint has read a flow SUSPENDED in the advisory table (it
//     reads it as it takes each of the flow's packets from its queue), no
//     later packet of the flow goes to the TX ring until it reads the mark
//     cleared; packets already copied into channel buffers still go.
//     Packets of other flows are not held.
package stack
