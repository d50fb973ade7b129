package flowswitch

import (
	"errors"
	"fmt"
	"io"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/netif"
)

// Host port (docs/design.md §4, §8): frames no user-space stack claimed belong to
// the kernel's own stack. With Options.HostLink set, rxOnce collects the
// frames of no flow (ARP included) and writes them to the host link, as
// they came from the device, in one Write at the end of the input batch;
// hostOnce reads what the kernel sends and writes it to the device link
// unchanged. Frames Parse rejected are not the kernel's: they stay drops,
// counted by reason.

// hostState is the host → device scratch, allocated once by New.
type hostState struct {
	bufs  [][]byte
	sizes []int
	out   [][]byte // bufs[i][:sizes[i]] for the device Write
}

func (h *hostState) init(n, frameLen int) {
	h.bufs = frameBufs(n, frameLen)
	h.sizes = make([]int, n)
	h.out = make([][]byte, 0, n)
}

// noFlow handles frame i of the input batch, which no flow claims: it goes
// to the host link at the end of the batch, or is dropped and counted.
func (s *Switch) noFlow(i int) {
	if s.ans.on && s.answer(i) {
		return
	}
	if s.host == nil {
		if s.kernTap {
			s.kernelKeeps(i)
			return
		}
		s.stats.NoFlow++
		s.capRxDrop(i, "no_flow")
		return
	}
	s.hostMark[i] = true
	s.nHost++
}

// kernelKeeps counts frame i of the input batch as the kernel's, passed
// and not dropped: read from a netif.KernelTap, the kernel's stack has its
// own copy. A capture sees it at kernel-rx.
func (s *Switch) kernelKeeps(i int) {
	s.stats.KernelKept++
	if s.capt.on {
		s.capPut(capNow(), capture.KernelRx, s.linkType, "", "", s.bufs[i][:s.sizes[i]])
		s.capWake()
	}
}

// isKernelTap reports whether l's frames of no flow are the kernel's.
func isKernelTap(l netif.Link) bool {
	t, ok := l.(netif.KernelTap)
	return ok && t.KernelGetsCopies()
}

// flushHost writes the frames marked for the host link, in the order they
// arrived (ARP is marked while parsing, IP frames after the lookup). The
// link copies them, so the input batch's buffers may be reused at once.
func (s *Switch) flushHost() error {
	if s.nHost == 0 {
		return nil
	}
	for i, m := range s.hostMark {
		if m {
			s.toHost = append(s.toHost, s.bufs[i][:s.sizes[i]])
			s.hostMark[i] = false
		}
	}
	s.nHost = 0
	if s.capt.on {
		s.capFrames(capture.KernelRx, "", s.toHost)
	}
	w, err := s.host.Write(s.toHost)
	s.stats.HostDelivered += uint64(w)
	s.stats.HostDrops += uint64(len(s.toHost) - w)
	clear(s.toHost)
	s.toHost = s.toHost[:0]
	if err != nil {
		return fmt.Errorf("flowswitch host write: %w", err)
	}
	return nil
}

// HostOnce reads one batch of frames the kernel sent on the host link and
// writes them to the device link unchanged (with Regulation, files them in
// the AQM), and returns how many it read.
// Without a host link it does nothing. Like RxOnce it never blocks (but for
// the switch's lock); Round calls it once per round.
func (s *Switch) HostOnce() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostOnce()
}

func (s *Switch) hostOnce() (int, error) {
	if s.host == nil {
		return 0, nil
	}
	h := &s.hostIn
	n, err := s.host.Read(h.bufs, h.sizes)
	if err != nil && !errors.Is(err, io.ErrShortBuffer) {
		return n, fmt.Errorf("flowswitch host read: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		h.out = append(h.out, h.bufs[i][:h.sizes[i]])
	}
	if s.capt.on {
		s.capHostTx(h.out)
	}
	var w int
	if s.reg != nil {
		// The kernel's frames share the device with the apps': they go
		// through the AQM too (regulation.go).
		w = s.enqueueHost(h.out, s.now())
	} else {
		w, err = s.link.Write(h.out)
	}
	s.stats.HostTx += uint64(w)
	clear(h.out)
	h.out = h.out[:0]
	if err != nil {
		return n, fmt.Errorf("flowswitch host to device: %w", err)
	}
	return n, nil
}
