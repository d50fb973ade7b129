// Package takeover hands a running nexus to a new nexus process (an
// upgrade under live traffic, docs/upgrade.md): the device (the AF_XDP
// socket, its UMEM, the XDP program, its link and maps), every port's
// channel (memfds, eventfds) with its flows, every control session (the
// apps' Unix connections) and the control socket move over SCM_RIGHTS on
// a Unix socket of their own (PATH.takeover, root only), with the state
// the datapath needs. Apps see a pause, not a reconnect: their channels,
// connections and flow IDs stay as they were.
//
// The hand-over runs in explicit steps; the old process (Donor) keeps
// everything it had until the commit:
//
//  1. prepare: the new process (Take) says hello with its state version;
//     the old one refuses a version it does not speak (ErrVersion), and
//     nothing was touched.
//  2. freeze: the old process parks its control sessions between two
//     requests, freezes its datapath between two rounds and exports its
//     state and duplicates of its descriptors.
//  3. transfer: the state and descriptors go over; the new process adopts
//     the link, starts a frozen nexus on it, adopts the ports and keeps
//     the sessions' connections (none of them served yet).
//  4. commit: the new process asks to commit; the old one answers and,
//     only if the answer reached the new one's socket, abandons
//     everything (closes its descriptors without a word to the apps,
//     tearing down no flow) and exits. The new one thaws its nexus and
//     serves the sessions.
//
// Invariants:
//
//   - Before the commit, the old nexus is the only one that ran the
//     datapath or read a session: the new one's nexus is frozen and its
//     sessions not started, so on any failure (an error, a refusal, the
//     new process dying at any step, the step timeout) the old one thaws
//     and serves on from exactly where it stopped, and the new one
//     abandons (never closes) what it adopted: no app is told anything,
//     no flow is torn down, no program detached.
//   - The state carries StateVersion; a process of another version is
//     refused before anything is frozen.
//   - The new nexus trusts only the old one's private state and
//     nexus-only memory, never what an app can write (channel.Adopt,
//     pool.Adopt, ring.RestoreProducer/RestoreConsumer), and it reads each
//     session's peer credentials from the kernel again.
//   - Only AF_XDP devices are handed over; a nexus on another driver
//     refuses with ErrNotSupported (restart it instead).
package takeover
