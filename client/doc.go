// Package client is what applications import to network over Skylane
// (docs/design.md §8): a Stack is a user-space TCP/IP stack (gVisor's netstack) on
// its own nexus port, offering the standard net.Listener, net.Conn and
// net.PacketConn, so net/http and crypto/tls work unchanged.
//
//	nx, _ := client.Connect("/run/skylane.sock") // skylane nexus --socket
//	st, _ := client.New(nx, client.Options{Name: "web"})
//	defer st.Close()
//	ln, _ := st.Listen("tcp", ":443")
//	http.Serve(tls.NewListener(ln, cfg), handler)
//
// The Stack talks to its nexus only through the Nexus and Port interfaces:
// open a port, register and tear down flows, wait for the nexus. Connect
// implements them for a nexus in another process serving its control
// socket (the contract is package control: the channel's rings and memory
// arrive by channel.Receive, requests are messages on the socket).
// Register's refusals unwrap to the contract's errors as in the nexus's
// process (flow.ErrPortInUse, ErrNotPermitted, ...), Wake is
// channel.App.Interrupt, and Wait is channel.App.WaitFor on the RX and
// event rings and, when the endpoint has packets left over, on the
// buffers or ring room they wait for (the nexus signals those too). The
// port lives as long as the session: if this process exits or crashes,
// the nexus closes it and tears its flows down.
// For a nexus in this process, package nexus/inproc implements Nexus; it
// is the nexus side, which an app that only connects does not link.
//
// Invariants:
//
//   - A flow is registered before any packet of it leaves: Listen registers
//     the listener flow(s) before listening, Dial registers the 5-tuple
//     before the SYN, and the endpoint registers accepted connections and UDP
//     replies from a listener's port before the SYN-ACK or reply leaves.
//   - Flows are torn down when their socket is: a listener or packet conn on
//     Close, a TCP connection once netstack lets it go (closed, or in
//     TIME-WAIT: the last ACK has been sent), everything on Stack.Close.
//   - A flow the nexus suspends (docs/design.md §7 flow advisories) is held
//     back in the stack's endpoint rather than losing packets in the nexus:
//     its TCP sender stops at its window, and resumes when the nexus lets
//     it go. Other flows of the stack keep sending (stack.Endpoint's Stats
//     and Suspended show it).
//   - An app learns at once that its nexus went (the control socket's end,
//     or Nexus.Done in this process): blocked and later Accept, Read,
//     Write and Dial return an error wrapping ErrNexusGone, and the Stack
//     has released the port's netstack, goroutines, memory and descriptors
//     before the app closes anything (TestNexusKilled). A Stack of
//     ConnectWith(Reattach) then attaches again whenever a nexus serves,
//     and its listeners go on there (TestReattach).
//   - The app links only the contract (channel, ring, pool, packet, flow,
//     control) and gVisor, never the nexus side (flowswitch, nexus,
//     regulate, neigh, the netif drivers, cilium/ebpf): TestDeps holds it.
//   - TCP recovers from loss with SACK (RFC 6675) and the retransmission
//     timer, not with netstack's default RACK. After a tail of losses
//     (a burst, a full queue), RACK kept counting the lost segments as in
//     flight (37 against a congestion window of 5) and sent one or two
//     segments per 200 ms while the retransmission timer, which clears
//     that count, never fired: a stream collapsed to about ten packets a
//     second for as long as the tail took. Without RACK a timeout resends
//     from the first lost segment in slow start. The window netstack
//     retracts under loss is handled by the endpoint (package stack).
//   - Addresses are IP literals; there is no resolver. A local address must
//     be one of the nexus's interface addresses (Stack.Addrs).
package client
