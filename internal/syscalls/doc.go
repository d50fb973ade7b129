// Package syscalls wraps the few raw system calls that Skylane's higher
// packages (the control socket, the command, the bench) need, so that
// golang.org/x/sys/unix stays in a handful of low packages (the allow-list
// in internal/layout): file locks, the umask, process CPU time, CPU
// affinity, yielding the CPU, socket buffers, a recvmmsg UDP receiver and
// the flags of netlink link updates.
//
// Invariants:
//   - Every function is a thin wrapper: it keeps no state between calls,
//     and what it opens (UDPBatch) is closed by its Close.
//   - Errors wrap the system call's errno, so errors.Is works on them.
package syscalls
