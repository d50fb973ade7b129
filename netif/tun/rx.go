package tun

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
)

// Wait implements netif.Link.Wait.
func (l *Link) Wait(timeout time.Duration) error {
	if l.closed.Load() {
		return netif.ErrClosed
	}
	if l.rxr.split.Left() > 0 || timeout == 0 {
		return nil // segments of a split super packet are waiting, or no blocking asked
	}
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	if err := l.f.SetReadDeadline(dl); err != nil {
		return l.closedErr(err)
	}
	if timeout > 0 {
		// The deadline also applies to Read's RawRead: lift it again.
		defer l.f.SetReadDeadline(time.Time{})
	}
	l.rxr.waited = false
	err := l.rc.Read(l.waitFn)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil
	}
	return l.closedErr(err)
}

// waitOnce is Wait's RawRead callback (bound once in New, so Wait does not
// allocate): the first call looks, the second (after the poller woke us)
// returns.
func (l *Link) waitOnce(fd uintptr) bool {
	r := &l.rxr
	if r.waited {
		return true // woken by the poller: readable (or spurious, which Wait allows)
	}
	r.waited = true
	// The poller is edge-triggered: a frame that arrived before this Wait
	// (and that the last Read left behind) raises no new edge, so look
	// before parking.
	r.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	n, err := unix.Poll(r.pfd[:], 0)
	return err != nil || n > 0 // on error, let Read find out
}

// Read implements netif.Link.Read; see the package doc for super packets.
// Each bufs[i] must hold MTU bytes; one of MaxSuperPacketLen bytes receives
// a super packet whole.
func (l *Link) Read(bufs [][]byte, sizes []int) (int, error) {
	if l.closed.Load() {
		return 0, netif.ErrClosed
	}
	limit := min(len(bufs), len(sizes))
	r := &l.rxr
	r.bufs, r.sizes, r.n, r.err = bufs[:limit], sizes[:limit], 0, nil
	err := l.rc.Read(l.readFn)
	n, rerr := r.n, r.err
	r.bufs, r.sizes = nil, nil // keep no reference to the caller's memory
	if err != nil {
		return n, l.closedErr(err)
	}
	if rerr != nil && !errors.Is(rerr, io.ErrShortBuffer) {
		rerr = fmt.Errorf("tun %s: read: %w", l.name, rerr)
	}
	return n, rerr
}

// readBatch is Read's RawRead callback (bound once in New): it reads frames
// into r.bufs until they are full or the device is empty. It always returns
// true: Read never waits.
func (l *Link) readBatch(fd uintptr) bool {
	r := &l.rxr
	bufs, sizes := r.bufs, r.sizes
	for r.n < len(bufs) {
		if r.split.Left() > 0 {
			k, err := l.emitSegments(bufs[r.n:], sizes[r.n:])
			r.n += k
			if err != nil {
				r.err = err
				return true
			}
			continue
		}
		buf := bufs[r.n]
		direct := len(buf) >= l.maxSuper
		var m int
		var errno error
		if direct {
			m, errno = readv(int(fd), r.buf[:vnet.HdrLen], buf, &r.iov)
		} else {
			m, errno = unix.Read(int(fd), r.buf)
		}
		switch errno {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return true
		case unix.EFAULT, unix.EINVAL:
			// The frame did not fit the buffer (the device's MTU was raised
			// behind our back): the kernel dropped it. Count and go on.
			l.stats.rxDrops.Add(1)
			continue
		default:
			r.err = errno
			return true
		}
		var pkt []byte
		if direct {
			pkt = buf[:max(0, m-vnet.HdrLen)]
		} else {
			pkt = r.buf[vnet.HdrLen:max(vnet.HdrLen, m)]
		}
		k, err := l.deliver(pkt, direct, bufs[r.n:], sizes[r.n:])
		r.n += k
		if err != nil {
			r.err = err
			return true
		}
	}
	return true
}

// deliver hands one frame read from the device to bufs: pkt is either in
// bufs[0] already (direct) or in the reader's buffer, whose first HdrLen
// bytes hold the virtio header in both cases. It returns how many bufs it
// filled; a bad frame is dropped and counted, and fills none.
func (l *Link) deliver(pkt []byte, direct bool, bufs [][]byte, sizes []int) (int, error) {
	r := &l.rxr
	c := &l.stats
	if err := r.hdr.Decode(r.buf[:vnet.HdrLen]); err != nil || len(pkt) == 0 {
		c.rxDrops.Add(1)
		return 0, nil
	}
	if r.hdr.IsGSO() && (len(pkt) > len(bufs[0]) || r.hdr.IsUSO()) {
		// Split it here; the segments come out of r.buf. A UDP super
		// packet is split even when bufs[0] holds it: delivered whole it
		// would be one datagram the sender never sent.
		if direct {
			// The segments are written to bufs[0], bufs[1], ...: move
			// the super packet out of their way first. Only USO gets
			// here (a direct buffer holds any super packet), so the copy
			// costs nothing on the TCP path.
			pkt = r.buf[vnet.HdrLen : vnet.HdrLen+copy(r.buf[vnet.HdrLen:], pkt)]
		}
		if err := r.split.Init(pkt, 0, &r.hdr); err != nil {
			c.rxDrops.Add(1)
			return 0, nil
		}
		r.split.Start()
		return l.emitSegments(bufs, sizes)
	}
	if len(pkt) > len(bufs[0]) {
		c.rxDrops.Add(1)
		return 0, io.ErrShortBuffer
	}
	if r.hdr.Flags&vnet.FlagNeedsCsum != 0 {
		if err := vnet.CompleteChecksum(pkt, int(r.hdr.CsumStart), int(r.hdr.CsumOffset)); err != nil {
			c.rxDrops.Add(1)
			return 0, nil
		}
	}
	if !direct {
		copy(bufs[0], pkt)
	}
	sizes[0] = len(pkt)
	c.rxPackets.Add(1)
	c.rxBytes.Add(uint64(len(pkt)))
	return 1, nil
}

// emitSegments writes the next segments of the super packet being split
// into bufs, as many as fit the batch.
func (l *Link) emitSegments(bufs [][]byte, sizes []int) (int, error) {
	c := &l.stats
	k, bytes, err := l.rxr.split.Emit(bufs, sizes)
	c.rxPackets.Add(uint64(k))
	c.rxBytes.Add(bytes)
	if err != nil { // a buffer smaller than the MTU: the caller broke the contract
		c.rxDrops.Add(1)
		return k, io.ErrShortBuffer
	}
	return k, nil
}
