package afpacket

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/internal/vnet"
)

// Transmit slot status values (tp_status).
const (
	txAvailable   = 0 // TP_STATUS_AVAILABLE: user space may fill the slot
	txSendRequest = 1 // TP_STATUS_SEND_REQUEST: filled, for the kernel to send
	txSending     = 2 // TP_STATUS_SENDING: the kernel is sending it
	txWrongFormat = 4 // TP_STATUS_WRONG_FORMAT: refused (skipped with PACKET_LOSS)
)

// Write implements netif.Link.Write: WriteGSO(frames, nil). Frames up to
// MaxFrameLen go out as they are; a TCP frame longer than that, up to
// MaxSuperPacketLen, goes as a super packet whose segments are MTU bytes
// long; any other longer frame stops the batch with netif.ErrFrameTooLarge.
func (l *Link) Write(frames [][]byte) (int, error) {
	return l.WriteGSO(frames, nil)
}

// WriteGSO implements netif.SuperPacketLink.WriteGSO. Runs of frames up to
// MaxFrameLen go through the transmit path of the TxMode, one system call
// per run; each super packet is one sendmsg(2) with a GSO virtio header
// (see the package doc). UDP super packets need Linux 6.2.
func (l *Link) WriteGSO(frames [][]byte, segSizes []int) (int, error) {
	if !l.lock() {
		return 0, netif.ErrClosed
	}
	defer l.mu.RUnlock()
	c := &l.stats
	n := 0 // frames[:n] are handled
	for n < len(frames) {
		end := n // frames[n:end] are plain frames
		for end < len(frames) && len(frames[end]) <= l.maxFrame {
			end++
		}
		if end > n {
			var k int
			var err error
			if l.txMode == TxRing {
				k, err = l.writeRing(frames[n:end])
			} else {
				k, err = l.writeMmsg(frames[n:end])
			}
			n += k
			if err != nil || n < end { // an error, or a full device: tail-drop the rest
				c.txDrops.Add(uint64(len(frames) - n))
				return n, err
			}
			continue
		}
		// frames[n] is longer than MaxFrameLen.
		seg := 0
		if n < len(segSizes) {
			seg = segSizes[n]
		}
		h, err := l.prepareGSO(frames[n], seg)
		if err != nil {
			// As for netif.ErrFrameTooLarge: frames[n:] are neither sent
			// nor counted as drops.
			return n, fmt.Errorf("afpacket %s: write frame %d of %d bytes (MTU frames up to %d, super packets up to %d): %w: %w",
				l.name, n, len(frames[n]), l.maxFrame, l.maxSuper, netif.ErrFrameTooLarge, err)
		}
		if l.txMode == TxRing && !l.ringFlushed() {
			// Sent on the other socket now, the super packet would
			// overtake the frames waiting in the ring.
			c.txDrops.Add(uint64(len(frames) - n))
			return n, nil
		}
		sent, err := l.writeSuper(frames[n], h)
		if err != nil || !sent {
			c.txDrops.Add(uint64(len(frames) - n))
			return n, err
		}
		n++
	}
	return n, nil
}

// writeRing copies frames into free transmit slots, then kicks the kernel.
// It returns how many it copied: the rest did not fit. Slots the kernel
// could not send at once (its send buffer is spent until earlier frames
// are freed) stay requested and go with the next kick; the send buffer is
// sized to the ring (New) so on a healthy link that does not happen.
func (l *Link) writeRing(frames [][]byte) (int, error) {
	w := &l.txw
	c := &l.stats
	n := 0
	var bytes uint64
	for _, f := range frames {
		slot := l.tx[w.head]
		st := loadStatus(slot, frStatusOff)
		if st&(txSendRequest|txSending) != 0 {
			break // the ring is full: the caller tail-drops the rest
		}
		// A slot the kernel refused (WRONG_FORMAT) is free again: with
		// PACKET_LOSS it moved past it.
		binary.NativeEndian.PutUint32(slot[frNextOff:], 0)
		binary.NativeEndian.PutUint32(slot[frLenOff:], uint32(vnet.HdrLen+len(f)))
		clear(slot[txDataOff : txDataOff+vnet.HdrLen]) // no offload asked
		copy(slot[txDataOff+vnet.HdrLen:], f)
		storeStatus(slot, frStatusOff, txSendRequest)
		w.head++
		if w.head == len(l.tx) {
			w.head = 0
		}
		n++
		bytes += uint64(len(f))
	}
	c.txPackets.Add(uint64(n))
	c.txBytes.Add(bytes)
	// Kick even when nothing fit: a full ring may be full of slots a
	// previous kick left requested, and only a kick sends them.
	return n, l.kick()
}

// kick asks the kernel to send the ring's requested slots.
func (l *Link) kick() error {
	w := &l.txw
	if err := l.rc.Write(l.kickFn); err != nil {
		return l.closedErr(err)
	}
	switch w.errno {
	case 0, unix.EAGAIN, unix.ENOBUFS, unix.EINTR:
		// The slots stay requested; the kernel sends them on the next kick.
		return nil
	}
	return fmt.Errorf("afpacket %s: send ring: %w", l.name, w.errno)
}

// ringFlushed reports whether the kernel took every slot filled so far,
// kicking it once more if not. The kernel sends slots strictly in ring
// order and marks each SENDING before it hands the frame to the device, so
// the last slot filled tells for all.
func (l *Link) ringFlushed() bool {
	w := &l.txw
	last := w.head - 1
	if last < 0 {
		last = len(l.tx) - 1
	}
	if loadStatus(l.tx[last], frStatusOff)&txSendRequest == 0 {
		return true
	}
	if l.kick() != nil {
		return false
	}
	return loadStatus(l.tx[last], frStatusOff)&txSendRequest == 0
}

// writeMmsg sends frames with sendmmsg, up to TxFrames per call. It
// returns how many the kernel took.
func (l *Link) writeMmsg(frames [][]byte) (int, error) {
	w := &l.txw
	c := &l.stats
	w.frames, w.n, w.bytes, w.errno = frames, 0, 0, 0
	err := l.rc.Write(l.mmsgFn)
	n, bytes, errno := w.n, w.bytes, w.errno
	w.frames = nil // keep no reference to the caller's memory
	c.txPackets.Add(uint64(n))
	c.txBytes.Add(bytes)
	if err != nil {
		return n, l.closedErr(err)
	}
	switch errno {
	case 0, unix.EAGAIN, unix.ENOBUFS:
		return n, nil
	}
	return n, fmt.Errorf("afpacket %s: sendmmsg: %w", l.name, errno)
}

// kickRing is writeRing's RawWrite callback (bound once in New).
func (l *Link) kickRing(fd uintptr) bool {
	l.txw.errno = kick(int(fd))
	return true
}

// sendBatch is writeMmsg's RawWrite callback (bound once in New): it sends
// w.frames with sendmmsg, up to TxFrames per call, until all went or the
// kernel took fewer.
func (l *Link) sendBatch(fd uintptr) bool {
	w := &l.txw
	frames := w.frames
	for w.n < len(frames) {
		m := min(len(frames)-w.n, len(w.mmsg))
		for i := range m {
			setMsg(&w.mmsg[i], w.iov[2*i:2*i+2], w.zero[:], frames[w.n+i])
		}
		sent, e := sendmmsg(int(fd), w.mmsg[:m])
		for i := range m {
			clearMsg(&w.mmsg[i], w.iov[2*i:2*i+2])
		}
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			w.errno = e
			return true
		}
		for _, f := range frames[w.n : w.n+sent] {
			w.bytes += uint64(len(f))
		}
		w.n += sent
		if sent < m {
			return true
		}
	}
	return true
}
