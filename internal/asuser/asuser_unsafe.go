// Package asuser runs a function on an OS thread with other credentials,
// for tests that need a peer of another uid (a control session's, say)
// without a child process. Linux credentials are per thread at the system
// call level: the thread is locked, changes its own ids with raw system
// calls (the syscall package's Setuid would change every thread), and is
// never unlocked, so the runtime ends it when its goroutine returns and
// no other goroutine ever runs with those ids.
//
// Needs root (CAP_SETUID, CAP_SETGID). Descriptors the function opens
// belong to the whole process as usual, and keep the credentials the
// kernel recorded when they were made (SO_PEERCRED, file opens).
package asuser

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Do runs fn on a fresh thread whose uid, gid and supplementary groups are
// the given ones, and returns fn's error, or why the ids could not be set
// (then fn did not run).
func Do(uid, gid uint32, groups []uint32, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := set(uid, gid, groups); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

func set(uid, gid uint32, groups []uint32) error {
	var p unsafe.Pointer
	if len(groups) > 0 {
		p = unsafe.Pointer(unsafe.SliceData(groups))
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(p), 0); e != 0 {
		return fmt.Errorf("asuser: setgroups %v: %w", groups, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("asuser: setresgid %d: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("asuser: setresuid %d: %w", uid, e)
	}
	return nil
}
