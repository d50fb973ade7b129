package syscalls

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessCPU returns the CPU time (user + system, all threads) this process
// used so far.
func ProcessCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// Yield gives the CPU to another runnable thread or process (sched_yield),
// which runtime.Gosched does not.
func Yield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// PinCPU binds the calling thread, which must be locked
// (runtime.LockOSThread), to cpu when the machine has more than one, and
// returns what restores its affinity. Best effort: when the kernel refuses,
// nothing changes and undo does nothing.
func PinCPU(cpu int) (undo func()) {
	var old unix.CPUSet
	if runtime.NumCPU() < 2 || unix.SchedGetaffinity(0, &old) != nil {
		return func() {}
	}
	var set unix.CPUSet
	set.Set(cpu)
	if unix.SchedSetaffinity(0, &set) != nil {
		return func() {}
	}
	return func() { _ = unix.SchedSetaffinity(0, &old) }
}
