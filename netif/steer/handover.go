package steer

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Handing the programs and maps to another process (a nexus takeover):
// the BPF objects are file descriptors, and an attached link stays
// attached as long as any process holds one of its descriptors. The
// process taking over gets duplicates (Export) and wraps them (AdoptXDP,
// AdoptFlows); the one handing over then closes its own, which detaches
// nothing.

// XDPHandoverFDs is how many descriptors XDP.Export returns: the program,
// the XSKMAP, the counters map, the link and the fragment map.
const XDPHandoverFDs = 5

func dupFD(fd int) (int, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	return d, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// Export returns duplicates of the attached program's descriptors, which
// the caller owns (see XDPHandoverFDs for their order). x keeps working.
func (x *XDP) Export() ([]int, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.prog == nil || x.link == nil || x.frags == nil {
		return nil, fmt.Errorf("steer: export XDP: not attached: %w", ErrClosed)
	}
	lf, ok := x.link.(interface{ FD() int })
	if !ok {
		return nil, errors.New("steer: export XDP: the link has no descriptor")
	}
	var fds []int
	for _, fd := range []int{x.prog.FD(), x.xsks.FD(), x.counters.FD(), lf.FD(), x.frags.FD()} {
		d, err := dupFD(fd)
		if err != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("steer: export XDP: %w", err)
		}
		fds = append(fds, d)
	}
	return fds, nil
}

// AdoptXDP wraps descriptors Export returned in another process: an
// attached program with its maps. It takes ownership of fds, closing them
// on failure.
func AdoptXDP(fds []int) (_ *XDP, err error) {
	if len(fds) != XDPHandoverFDs {
		closeFDs(fds)
		return nil, fmt.Errorf("steer: adopt XDP: %d descriptors, want %d", len(fds), XDPHandoverFDs)
	}
	x := &XDP{}
	next := 0
	defer func() {
		if err != nil {
			closeFDs(fds[next:])
			x.Close()
		}
	}()
	if x.prog, err = ebpf.NewProgramFromFD(fds[0]); err != nil {
		return nil, fmt.Errorf("steer: adopt XDP program: %w", err)
	}
	next = 1
	if x.xsks, err = ebpf.NewMapFromFD(fds[1]); err != nil {
		return nil, fmt.Errorf("steer: adopt XSKMAP: %w", err)
	}
	next = 2
	if x.counters, err = ebpf.NewMapFromFD(fds[2]); err != nil {
		return nil, fmt.Errorf("steer: adopt XDP counters: %w", err)
	}
	next = 3
	if x.prog.Type() != ebpf.XDP || x.xsks.Type() != ebpf.XSKMap {
		return nil, fmt.Errorf("steer: adopt XDP: program type %v, map type %v", x.prog.Type(), x.xsks.Type())
	}
	if x.link, err = link.NewFromFD(fds[3]); err != nil {
		return nil, fmt.Errorf("steer: adopt XDP link: %w", err)
	}
	next = 4
	// The program's fragment map: the program keeps its own reference,
	// but the nexus holds it too (so what it holds is the same after a
	// takeover as before, and Close releases it).
	if x.frags, err = ebpf.NewMapFromFD(fds[4]); err != nil {
		return nil, fmt.Errorf("steer: adopt fragment map: %w", err)
	}
	next = 5
	if x.frags.Type() != ebpf.LRUHash {
		return nil, fmt.Errorf("steer: adopt fragment map: type %v, want an LRU hash", x.frags.Type())
	}
	return x, nil
}

// ExportFD returns a duplicate of the flow map's descriptor, which the
// caller owns.
func (f *Flows) ExportFD() (int, error) {
	var d int
	err := f.withMap(func(m *ebpf.Map) error {
		var err error
		d, err = dupFD(m.FD())
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("steer: export flow map: %w", err)
	}
	return d, nil
}

// AdoptFlows wraps a flow map's descriptor ExportFD returned in another
// process, with the flows it holds. It takes ownership of fd.
func AdoptFlows(fd int) (*Flows, error) {
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("steer: adopt flow map: %w", err)
	}
	if m.Type() != ebpf.Hash || m.KeySize() != KeyLen || m.ValueSize() != valueLen {
		m.Close()
		return nil, fmt.Errorf("steer: adopt flow map: type %v key %d value %d, want a hash of %d-byte keys", m.Type(), m.KeySize(), m.ValueSize(), KeyLen)
	}
	return &Flows{m: m, max: int(m.MaxEntries())}, nil
}
