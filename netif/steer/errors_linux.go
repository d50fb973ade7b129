package steer

import (
	"errors"
	"github.com/cilium/ebpf"

	"golang.org/x/sys/unix"
)

// errE2BIG is what a full hash map's update returns.
var errE2BIG = unix.E2BIG

// privHint explains a permission error, the usual first failure when not
// root.
func privHint(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return " (loading BPF maps and programs needs root, or CAP_BPF and CAP_NET_ADMIN)"
	}
	return ""
}

// attachHint explains the usual reasons an attachment fails.
func attachHint(err error, what string) string {
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		if what == "TCX" {
			return " (TCX needs Linux 6.6 or later)"
		}
		return " (BPF links for XDP need Linux 5.9 or later)"
	case errors.Is(err, unix.ENODEV):
		return " (no such interface in this network namespace)"
	case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EEXIST):
		return " (another XDP program is attached to the device: detach it first, e.g. ip link set dev DEV xdp off)"
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
		return " (the driver may not support this XDP mode: try generic)"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return " (needs root, or CAP_BPF and CAP_NET_ADMIN)"
	}
	return ""
}
