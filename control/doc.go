// Package control is the contract between apps and a nexus in another
// process (docs/design.md §1, §3): the messages of the control socket, the
// errors that cross it, and the app's half, Session (Open), which package
// client wraps as a client.Nexus (client.Connect). The nexus's half,
// serving the socket, is package nexus/control. Apps link this package,
// never the nexus side: it imports only the shared contract (channel,
// flow, packet) and the standard library.
//
// Protocol: one connection is one app session with at most one port. Each
// message is one SOCK_SEQPACKET record of JSON, at most MaxMessage bytes;
// the app sends a Request and the nexus answers each with one Reply, in
// order, one request at a time:
//
//	open {name, advisories, layout} → {ok, name, addrs, mtu}, then the
//	                                   channel (channel.Channel.Send:
//	                                   descriptor JSON and its memfds and
//	                                   eventfds as SCM_RIGHTS)
//	register {key, kind}            → {ok, flow_id, advisory}
//	teardown {key}                  → {ok}
//	register-batch {keys, kind}     → {ok, flows: [{id, adv} or
//	                                   {error, code}] one per key}
//	teardown-batch {keys}           → {ok, flows: [{} or {error, code}]}
//	host-listener {key}             → {ok}, with the kernel socket that
//	                                   reserves the port's TCP listener
//	                                   flow key as SCM_RIGHTS (none when
//	                                   no kernel shares the device): the
//	                                   one reply with a descriptor
//	close {}                        → {ok}; the nexus then ends the session
//
// A batch names 1..MaxBatch keys, each with its own outcome; a nexus that
// serves batches says so in its open reply (batch), and Session falls
// back to one request per key with one that does not. A refused request
// gets {error, code}; code names the sentinel error
// (flow.ErrPortInUse, flow.ErrKernelPort, ErrNoFlow, ErrNotPermitted, ...),
// which the app's *RemoteError unwraps to, so errors.Is works across
// processes. Everything else moves through the channel's shared memory and
// eventfds, not this socket.
//
// Invariants:
//
//   - The layout is checked twice: the app names its channel.LayoutVersion
//     at open and the nexus refuses another with ErrLayout; the channel's
//     descriptor carries the nexus's and channel.Receive refuses another.
//     So an app built for another layout never maps the channel.
//   - Nothing read from the socket is trusted, on either side: DecodeRequest
//     checks a request completely, and a reply that does not decode ends
//     the app's request with an error. A reply may carry one descriptor
//     at most (more end the session, closed); one that comes with any
//     reply but host-listener's is closed.
//   - The connection is the session: when it ends, the nexus closes the
//     port and tears its flows down; when the app sees it end without a
//     close of its own, the nexus is gone (ErrNexusGone).
package control
