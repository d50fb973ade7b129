// Package control is the nexus's half of the control socket (docs/design.md
// §1, §3): a Server answers app sessions on a SOCK_SEQPACKET Unix socket
// (ListenSocket for a daemon, Listen for tests), each of which opens one
// nexus port and receives its channel. The protocol, its messages and
// errors, and the app's half (Session) are the contract apps link, package
// github.com/skylane/skylane/control; this package is linked only by the
// nexus.
//
// Authorisation: each session is the kernel's peer credentials of its
// connection (SO_PEERCRED, SO_PEERGROUPS), matched against the policy
// (package nexus/policy) when it connects and again on every SetPolicy.
// The open is refused if no rule matches; the port gets the rule's
// max_pool and rate. Every register is checked: a listener's port and
// address against the rule's; a connected flow on a port the session
// listens on is an accepted connection (allowed); any other connected
// flow is an outgoing connection, which needs dial (and dial_to) and a
// local port from the ephemeral range the open reply names, or one the
// rule lets it bind; and no more than max_flows flows at once. A
// host-listener request gets the kernel socket reserving one of the
// session's own listener flows (TCP or UDP) (nexus.Port.HostListener), never
// another's. stats
// needs observe; a capture (skylane capture, capture.go) observe, or
// observe = "own" for the frames of the ports of the session's own uid's
// apps open when it starts. uid 0 and the nexus's own uid may do
// everything.
//
// Invariants:
//
//   - Nothing read from the socket is trusted: a message longer than
//     control.MaxMessage, one carrying descriptors (the kernel closes them), one
//     that does not decode (control.DecodeRequest), or one out of order
//     (register before open, a second open) ends that session only. Keys
//     and kinds are checked again by the flow table, and a session can only
//     tear down its own port's flows.
//   - A refusal by the policy is a reply whose code is control.ErrNotPermitted's,
//     with a text naming the rule that governs the app and one that would
//     allow the request; it is counted (Server.Refused, the session's stats)
//     and logged, and the session goes on.
//   - An open naming another channel layout version is refused
//     (control.ErrLayout) before a channel is made.
//   - When a session ends, for whatever reason (close, the connection
//     dropping because the app exited or crashed, a protocol violation,
//     Serve stopping), its port is closed, which tears down its flows
//     before the channel is closed: a dead app holds no flow and no port.
//     Shutdown first sends every app a last message with
//     control.ErrNexusGone's code and the reason.
//   - A reloaded policy (SetPolicy) applies to later requests only: flows
//     and ports sessions hold are kept.
//   - The socket file is guarded by PATH.lock, flocked for the nexus's life:
//     a stale file (its nexus died) is replaced, a live nexus's refused.
//   - The nexus's worker never blocks on a socket: it only duplicates the
//     channel's descriptors (nexus.RemotePort.Send); replies and the
//     channel are written by the session's goroutine, with a deadline. A
//     capture's frames go through a bounded ring the worker never waits
//     for (a full ring drops, counted); the session's goroutine sends
//     them, at most 4 captures run at once.
//   - Every session goroutine is owned by Serve: cancelling its context or
//     closing the listener closes every session, and Serve returns only
//     after all of them exited.
//   - Rate caps are the operator's, not the app's: an app can ask only
//     whether it honours advisories.
//   - A takeover (handover.go) parks the accept loop, then every session
//     between two requests (the next one waits in its socket), and either
//     thaws them or abandons them to another nexus without a word to the
//     apps and without closing their ports; the nexus taking over reads
//     each peer's credentials from the kernel again and applies its own
//     policy.
package control
