// Package control is the nexus's half of the control socket (docs/design.md
// §1, §3): Serve answers app sessions on a SOCK_SEQPACKET Unix socket
// (Listen), each of which opens one nexus port and receives its channel.
// The protocol, its messages and errors, and the app's half (Session) are
// the contract apps link, package github.com/skylane/skylane/control; this
// package is linked only by the nexus.
//
// Invariants:
//
//   - Nothing read from the socket is trusted: a message longer than
//     control.MaxMessage, one carrying descriptors (the kernel closes them), one
//     that does not decode (control.DecodeRequest), or one out of order
//     (register before open, a second open) ends that session only. Keys
//     and kinds are checked again by the flow table, and a session can only
//     tear down its own port's flows.
//   - An open naming another channel layout version is refused
//     (control.ErrLayout) before a channel is made.
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
