// Package control is the control socket between apps and a nexus
// (docs/design.md §1, §3): how an app in another process gets a nexus
// port. The nexus side is Serve, on a SOCK_SEQPACKET Unix socket (Listen);
// the app side is Session (Open), which package client wraps as a
// client.Nexus (client.Connect).
//
// Protocol: one connection is one app session with at most one port. Each
// message is one SOCK_SEQPACKET record of JSON, at most MaxMessage bytes;
// the app sends a Request and the nexus answers each with one Reply, in
// order, one request at a time:
//
//	open {name, advisories}  → {ok, name, addrs, mtu}, then the channel
//	                            (channel.Channel.Send: descriptor JSON and
//	                            its memfds and eventfds as SCM_RIGHTS)
//	register {key, kind}     → {ok, flow_id, advisory}
//	teardown {key}           → {ok}
//	close {}                 → {ok}; the nexus then ends the session
//
// A refused request gets {error, code}; code names the sentinel error
// (flow.ErrPortInUse, flow.ErrKernelPort, nexus.ErrNoFlow, ...), which the
// app's *RemoteError unwraps to, so errors.Is works across processes.
// Everything else moves through the channel's shared memory and eventfds,
// not this socket.
//
// Invariants:
//
//   - Nothing read from the socket is trusted: a message longer than
//     MaxMessage, one carrying descriptors (the kernel closes them), one
//     that does not decode (DecodeRequest), or one out of order (register
//     before open, a second open) ends that session only. Keys and kinds
//     are checked again by the flow table, and a session can only tear
//     down its own port's flows.
//   - When a session ends, for whatever reason (close, the connection
//     dropping because the app exited or crashed, a protocol violation,
//     Serve stopping), its port is closed, which tears down its flows
//     before the channel is closed: a dead app holds no flow and no port.
//   - The nexus's worker never blocks on a socket: it only duplicates the
//     channel's descriptors (nexus.RemotePort.Send); replies and the
//     channel are written by the session's goroutine, with a deadline.
//   - Every session goroutine is owned by Serve: cancelling its context or
//     closing the listener closes every session, and Serve returns only
//     after all of them exited.
//   - Rate caps are the operator's, not the app's: an app can ask only
//     whether it honours advisories.
package control
