package afxdp

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/pool"
)

// Handing the link to another process (a nexus takeover, docs/upgrade.md):
// the AF_XDP socket, its UMEM (a memfd), the XDP program, its link and
// maps are all file descriptors. The new process gets duplicates
// (Export), maps the rings and the UMEM again (Adopt) and carries on
// from the old one's private ring indices and free frame lists; the
// device never sees the socket unbound or the program detached, so no
// frame of a steered flow reaches the kernel in between. The old process
// then closes its own descriptors (Close), which releases nothing the new
// one holds.

// Handover is the link's state besides its descriptors.
type Handover struct {
	Name      string        `json:"name"`
	Ifindex   int           `json:"ifindex"`
	Queue     int           `json:"queue"`
	MTU       int           `json:"mtu"`
	MaxFrame  int           `json:"max_frame"`
	FrameSize uint64        `json:"frame_size"`
	RingSize  uint32        `json:"ring_size"`
	ZeroCopy  bool          `json:"zero_copy"`
	SG        bool          `json:"sg"`
	CsumAll   bool          `json:"csum_all"`
	OwnFlows  bool          `json:"own_flows"`
	Rings     [4]uint32     `json:"rings"` // private indices: fill and TX producer, RX and completion consumer
	RxFree    []uint64      `json:"rx_free"`
	TxFree    []uint64      `json:"tx_free"`
	RxSkip    bool          `json:"rx_skip"`
	UMEM      pool.Handover `json:"umem"`
	Stats     Stats         `json:"stats"`
}

// HandoverFDs is how many descriptors Export returns: the AF_XDP socket,
// the UMEM pool's three regions, the XDP program's (steer.XDPHandoverFDs)
// and the flow map.
const HandoverFDs = 4 + steer.XDPHandoverFDs + 1

// Exporter is the link's hand-over API (a nexus takeover).
type Exporter interface {
	// Interrupt makes a Wait in progress (or the next one) return nil,
	// so that its goroutine hands the reader role back.
	Interrupt()
	// Export returns the link's state and duplicates of its descriptors
	// (HandoverFDs, owned by the caller). The link keeps working. Call
	// it with no Read, Write or Wait in progress. A super packet being
	// split across Reads is not handed over (its segments are lost).
	Export() (Handover, []int, error)
}

var _ Exporter = (*xlink)(nil)

// Interrupt implements Exporter.Interrupt.
func (l *xlink) Interrupt() {
	if !l.closed.Load() {
		l.interrupted.Store(true)
		_ = l.wake.Signal()
	}
}

// Export implements Exporter.Export.
func (l *xlink) Export() (Handover, []int, error) {
	l.rxMu.Lock()
	defer l.rxMu.Unlock()
	l.txMu.Lock()
	defer l.txMu.Unlock()
	if l.closed.Load() {
		return Handover{}, nil, fmt.Errorf("afxdp %s: export: link closed", l.name)
	}
	h := Handover{
		Name: l.name, Ifindex: l.ifindex, Queue: l.queue, MTU: l.mtu, MaxFrame: l.maxFrame,
		FrameSize: l.lay.frameSize, RingSize: l.rx.size, ZeroCopy: l.zc, SG: l.sg, CsumAll: l.csumAll, OwnFlows: l.ownFlows,
		Rings:  [4]uint32{l.fill.local, l.tx.local, l.rx.local, l.comp.local},
		RxFree: append([]uint64(nil), l.rxFree...), TxFree: append([]uint64(nil), l.txFree...),
		RxSkip: l.rxSkip, Stats: l.XDPStats(),
	}
	var fds []int
	fail := func(err error) (Handover, []int, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return Handover{}, nil, fmt.Errorf("afxdp %s: export: %w", l.name, err)
	}
	d, err := shm.Dup(l.fd)
	if err != nil {
		return fail(err)
	}
	fds = append(fds, d)
	ph, pfds, err := l.pool.Export()
	if err != nil {
		return fail(err)
	}
	h.UMEM = ph
	fds = append(fds, pfds[:]...)
	xfds, err := l.xdp.Export()
	if err != nil {
		return fail(err)
	}
	fds = append(fds, xfds...)
	ffd, err := l.flows.ExportFD()
	if err != nil {
		return fail(err)
	}
	fds = append(fds, ffd)
	return h, fds, nil
}

// Adopt rebuilds a link another process exported. It takes ownership of
// fds (closed on failure). The socket stays bound and the program
// attached throughout.
func Adopt(h Handover, fds []int) (_ Link, err error) {
	if len(fds) != HandoverFDs {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("afxdp: adopt: %d descriptors, want %d", len(fds), HandoverFDs)
	}
	l := &xlink{name: h.Name, ifindex: h.Ifindex, queue: h.Queue, mtu: h.MTU, maxFrame: h.MaxFrame, maxSuper: h.MaxFrame,
		zc: h.ZeroCopy, csumAll: h.CsumAll, ownFlows: h.OwnFlows, fd: fds[0]}
	taken := 1 // fds[:taken] belong to l
	defer func() {
		if err != nil {
			for _, fd := range fds[taken:] {
				unix.Close(fd)
			}
			l.release()
		}
	}()
	n := h.RingSize
	if n < MinRingSize || n > MaxRingSize || n&(n-1) != 0 || (h.FrameSize != 2048 && h.FrameSize != 4096) {
		return nil, fmt.Errorf("afxdp: adopt: ring size %d, frame size %d", n, h.FrameSize)
	}
	l.lim = rxLimits{maxFrame: l.maxFrame, maxDescs: 1, keep: l.keep}
	if l.wake, err = shm.NewEventFD(); err != nil {
		return nil, err
	}
	var pfds [3]int
	copy(pfds[:], fds[1:4])
	if l.pool, err = pool.Adopt(h.UMEM, pfds); err != nil {
		return nil, fmt.Errorf("afxdp: adopt UMEM: %w", err)
	}
	taken = 4
	frames := 2 * int(n)
	size := frames * int(h.FrameSize)
	if size > len(l.pool.Mem()) {
		return nil, fmt.Errorf("afxdp: adopt: UMEM of %d bytes, %d frames of %d need %d", len(l.pool.Mem()), frames, h.FrameSize, size)
	}
	l.umem = l.pool.Mem()[:size:size]
	l.lay = layout{frameSize: h.FrameSize, rxEnd: uint64(n) * h.FrameSize, end: uint64(size)}
	for _, a := range h.RxFree {
		if a >= l.lay.rxEnd || a%l.lay.frameSize != 0 {
			return nil, fmt.Errorf("afxdp: adopt: free RX frame at %d outside the layout", a)
		}
	}
	for _, a := range h.TxFree {
		if a < l.lay.rxEnd || a >= l.lay.end || a%l.lay.frameSize != 0 {
			return nil, fmt.Errorf("afxdp: adopt: free TX frame at %d outside the layout", a)
		}
	}
	l.rxFree = append(make([]uint64, 0, n), h.RxFree...)
	l.txFree = append(make([]uint64, 0, n), h.TxFree...)
	l.rxSkip = h.RxSkip
	if err = l.mapRings(n); err != nil {
		return nil, err
	}
	l.fill.local, l.tx.local, l.rx.local, l.comp.local = h.Rings[0], h.Rings[1], h.Rings[2], h.Rings[3]
	if l.xdp, err = steer.AdoptXDP(fds[4 : 4+steer.XDPHandoverFDs]); err != nil {
		taken = HandoverFDs - 1
		return nil, err
	}
	taken = HandoverFDs - 1
	if l.flows, err = steer.AdoptFlows(fds[HandoverFDs-1]); err != nil {
		taken = HandoverFDs
		return nil, err
	}
	taken = HandoverFDs
	l.ownFlows = true // the adopted map is this process's to close
	if h.SG {
		l.enableSG()
	}
	l.restoreStats(h.Stats)
	return l, nil
}

// restoreStats carries the old process's counters on, so that they keep
// growing across a takeover.
func (l *xlink) restoreStats(s Stats) {
	l.rxPackets.Store(s.RxPackets)
	l.rxBytes.Store(s.RxBytes)
	l.txPackets.Store(s.TxPackets)
	l.txBytes.Store(s.TxBytes)
	// RxDrops includes the kernel's counters, which the socket keeps.
	l.rxDrops.Store(s.RxDrops - s.KernelRxDropped - s.KernelRxFull)
	l.txDrops.Store(s.TxDrops)
	l.badDescs.Store(s.BadDescs)
	l.kickErrors.Store(s.KickErrors)
	l.superRx.Store(s.RxSuperPackets)
	l.superSplit.Store(s.RxSuperSplit)
	l.csumDone.Store(s.RxCsumCompleted)
	l.udpSuper.Store(s.RxUDPSuper)
	l.badSuper.Store(s.RxBadSuper)
	l.badChains.Store(s.BadChains)
	l.superTx.Store(s.TxSuperPackets)
}

// interruptWait is Wait's answer to a wake that was Interrupt's, not
// Close's: reset the eventfd and report a (spurious) wake-up.
func (l *xlink) interruptWait() bool {
	if !l.interrupted.CompareAndSwap(true, false) {
		return false
	}
	l.wake.Drain()
	return true
}
