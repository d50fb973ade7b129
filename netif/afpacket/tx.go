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

// Write implements netif.Link.Write. Frames go out in order; a frame longer
// than MaxFrameLen stops the batch with netif.ErrFrameTooLarge.
func (l *Link) Write(frames [][]byte) (int, error) {
	if !l.lock() {
		return 0, netif.ErrClosed
	}
	defer l.mu.RUnlock()
	k := len(frames) // frames[:k] are not too large
	for i, f := range frames {
		if len(f) > l.maxFrame {
			k = i
			break
		}
	}
	var n int
	var err error
	if l.txMode == TxRing {
		n, err = l.writeRing(frames[:k])
	} else {
		n, err = l.writeMmsg(frames[:k])
	}
	if err == nil && k < len(frames) {
		err = fmt.Errorf("afpacket %s: write frame %d of %d bytes (max %d): %w",
			l.name, k, len(frames[k]), l.maxFrame, netif.ErrFrameTooLarge)
	}
	return n, err
}

// writeRing copies frames into free transmit slots, then kicks the kernel.
// Slots the kernel could not send at once (EAGAIN: the socket's send
// buffer is spent until earlier frames are freed) stay requested and go
// with the next Write's kick; the send buffer is sized to the ring (New)
// so on a healthy link that does not happen.
func (l *Link) writeRing(frames [][]byte) (int, error) {
	w := &l.txw
	c := &l.stats
	n := 0
	var bytes uint64
	for _, f := range frames {
		slot := l.tx[w.head]
		st := loadStatus(slot, frStatusOff)
		if st&(txSendRequest|txSending) != 0 {
			break // the ring is full: tail-drop the rest
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
	c.txDrops.Add(uint64(len(frames) - n))
	c.txPackets.Add(uint64(n))
	c.txBytes.Add(bytes)
	if n == 0 && len(frames) == 0 {
		return 0, nil
	}
	// Kick even when nothing fit: a full ring may be full of slots a
	// previous kick left requested (the kernel stopped at EAGAIN when the
	// socket's send buffer was spent), and only a kick sends them.
	err := l.rc.Write(l.kickFn)
	if err != nil {
		return n, l.closedErr(err)
	}
	switch w.errno {
	case 0, unix.EAGAIN, unix.ENOBUFS, unix.EINTR:
		// The slots stay requested; the kernel sends them on the next kick.
		return n, nil
	}
	return n, fmt.Errorf("afpacket %s: send ring: %w", l.name, w.errno)
}

// writeMmsg sends frames with sendmmsg, up to TxFrames per call.
func (l *Link) writeMmsg(frames [][]byte) (int, error) {
	w := &l.txw
	c := &l.stats
	w.frames, w.n, w.bytes, w.errno = frames, 0, 0, 0
	err := l.rc.Write(l.mmsgFn)
	n, bytes, errno := w.n, w.bytes, w.errno
	w.frames = nil // keep no reference to the caller's memory
	c.txPackets.Add(uint64(n))
	c.txBytes.Add(bytes)
	c.txDrops.Add(uint64(len(frames) - n)) // a full device tail-drops
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
